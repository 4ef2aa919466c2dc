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

/// `backup` as a task: progress per object checked, and an error naming
/// what does not match (the first damaged object, or the missing shards).
pub async fn run(
    target: &crate::node::Target,
    name: &str,
    concurrency: usize,
    progress: &crate::progress::Progress,
    cancel: &CancellationToken,
) -> Result<()> {
    let (m, checked, missing) =
        backup(&target.store, &target.prefix, name, concurrency, cancel).await?;
    progress.update(|t| {
        t.shards_total = checked.len() as u32;
        t.shards_done = checked.iter().filter(|c| c.problem.is_none()).count() as u32;
        t.bytes_total = m.total_bytes();
        t.bytes_done = checked
            .iter()
            .filter(|c| c.problem.is_none())
            .map(|c| c.size)
            .sum();
        t.qdrant_version = m.qdrant_version.clone();
    });
    let bad: Vec<String> = checked
        .iter()
        .filter_map(|c| c.problem.as_ref().map(|p| format!("{}: {p}", c.key)))
        .collect();
    if let Some(first) = bad.first() {
        return Err(crate::Error::ChecksumMismatch {
            key: format!(
                "{} of {} objects of backup {name}",
                bad.len(),
                checked.len()
            ),
            expected: "the manifest's size and sha256".into(),
            actual: format!("first: {first}"),
        });
    }
    if !missing.is_empty() {
        return Err(crate::Error::Incomplete(format!(
            "backup {name} lacks shards: {}",
            missing.join("; ")
        )));
    }
    Ok(())
}
