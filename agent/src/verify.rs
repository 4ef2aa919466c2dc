//! Checks a backup in its store, without Qdrant: every object the manifest
//! lists is read once and compared with its size and sha256, and every
//! collection must hold all its shards.

use crate::manifest::{self, Manifest};
use crate::store::ObjectStore;
use crate::{Result, keys};
use futures::StreamExt;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// One object's check.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// Relative to the backup root, as in the manifest.
    pub key: String,
    pub size: u64,
    /// What is wrong with it, if anything.
    pub problem: Option<String>,
}

/// The manifest, each object's check, and what is missing per collection.
pub async fn backup(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    name: &str,
    concurrency: usize,
    cancel: &CancellationToken,
) -> Result<(Manifest, Vec<Checked>, Vec<String>)> {
    let m = manifest::read(&**store, prefix, name).await?;
    let root = keys::backup_root(prefix, name);
    for (_, o) in m.objects() {
        keys::validate_rel_key(&o.key)?;
    }
    let objects: Vec<_> = m.objects().map(|(_, o)| o.clone()).collect();
    let checked = futures::stream::iter(objects)
        .map(|o| {
            let root = root.clone();
            async move {
                let r = crate::restore::verify_one(store, &root, &o, cancel).await;
                Checked {
                    key: o.key,
                    size: o.size,
                    problem: r.err().map(|e| format!("{e} [{}]", e.reason())),
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut checked = checked;
    checked.sort_by(|a, b| a.key.cmp(&b.key));
    if cancel.is_cancelled() {
        return Err(crate::Error::Cancelled);
    }
    let missing = m
        .collections
        .iter()
        .filter_map(|c| manifest::missing_shards(c).map(|why| format!("{}: {why}", c.name)))
        .collect();
    Ok((m, checked, missing))
}
