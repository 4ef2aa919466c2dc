//! The restore task. Refuses, touching nothing, a backup without a
//! manifest, from another Qdrant minor version, or (with `verify_first`)
//! with an object whose sha256 differs. Then creates each missing
//! collection from its saved config, streams each shard object into
//! Qdrant's shard snapshot upload with its sha256, which Qdrant checks
//! before it recovers (FILE-mode objects are downloaded with ranged GETs and
//! recovered from the snapshots volume), re-creates aliases and waits for
//! green. Collections go at once, sharing one budget of objects in flight;
//! a failure removes the collections this restore created.

use crate::error::{Error, Result};
use crate::keys;
use crate::manifest::{self, CollectionEntry, Manifest, ObjectEntry, ObjectMode};
use crate::node::{Node, Target};
use crate::progress::{Progress, or_cancelled};
use crate::qdrant::{create_body_from_config, minor_version};
use crate::store::{ByteStream, ObjectStore};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use qdrant_agent_proto::v1::ShardResult;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub backup_name: String,
    /// (collection, shard ids); empty = all collections / all shards.
    pub collections: Vec<(String, Vec<u32>)>,
    pub rename: HashMap<String, String>,
    pub verify_first: bool,
    pub create_collections: bool,
    pub restore_aliases: bool,
    pub green_timeout: Duration,
    pub concurrency: usize,
    pub stage: Stage,
    /// Who runs the restore (the QdrantRestore's UID). Collections it
    /// creates carry it under [`OWNER_KEY`] in their metadata until it
    /// finishes; a rollback deletes only those. Empty: no marker (the CLI,
    /// which rolls back within its one task).
    pub owner: String,
    /// Whether hints name the CLI's flags (`--rename`) or the QdrantRestore's
    /// fields (`spec.collectionMapping`).
    pub from_cli: bool,
}

impl RestoreRequest {
    /// How a person gives collection `old` the new name `new`.
    fn rename_hint(&self, old: &str, new: &str) -> String {
        if self.from_cli {
            format!("--rename {old}={new}")
        } else {
            format!("spec.collectionMapping: {{{old}: {new}}}")
        }
    }

    /// The source collection restored as `target`.
    fn source_of<'a>(&'a self, target: &'a str) -> &'a str {
        self.rename
            .iter()
            .find(|(_, new)| new.as_str() == target)
            .map_or(target, |(old, _)| old.as_str())
    }

    /// Restoring over a live collection would replace its data: refused,
    /// saying how to restore beside it.
    fn exists(&self, target: &str) -> Error {
        let source = self.source_of(target);
        Error::Invalid(format!(
            "collection {target:?} already exists in the target Qdrant; restore {source:?} under another name ({}) or delete {target:?} first",
            self.rename_hint(source, "NEW")
        ))
    }
}

/// The key, in a collection's metadata, of the restore that is creating it.
pub const OWNER_KEY: &str = "qdrant-agent/restore";

/// The restore that is creating collection `info` (`GET /collections/{c}`).
fn owner_of(info: &serde_json::Value) -> Option<&str> {
    info.pointer("/config/metadata")?.get(OWNER_KEY)?.as_str()
}

/// Which part of a restore to run. A single node runs `All`; the controller
/// runs the others in turn on a multi-node cluster: one `Create`, one
/// `Upload` per pod holding replicas, one `Finish`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stage {
    #[default]
    All,
    Create,
    Upload,
    Finish,
    Rollback,
}

impl Stage {
    fn creates(self) -> bool {
        matches!(self, Stage::All | Stage::Create)
    }
    fn uploads(self) -> bool {
        matches!(self, Stage::All | Stage::Upload)
    }
    fn finishes(self) -> bool {
        matches!(self, Stage::All | Stage::Finish)
    }
}

/// Deletes the collections a failed restore created, by their names in
/// Qdrant (each renamed as the request says), and only those: a collection
/// without the restore's owner in its metadata existed before, or another
/// party made it, and is left untouched. It needs neither the backup nor
/// its manifest: a backup deleted meanwhile cannot block it. A collection
/// already gone counts as deleted, so it can be repeated.
async fn rollback(node: &Node, req: &RestoreRequest) -> Result<()> {
    if req.owner.is_empty() {
        return Err(Error::Invalid(
            "a rollback needs the restore's owner: it deletes only the collections that carry it"
                .into(),
        ));
    }
    for (c, _) in &req.collections {
        let name = req.rename.get(c).unwrap_or(c);
        keys::validate_segment("collection", name)?;
        match node.qdrant.collection(name).await? {
            None => {}
            Some(info) if owner_of(&info) == Some(req.owner.as_str()) => {
                node.qdrant.delete_collection(name).await?;
                tracing::info!(collection = %name, "rolled back: deleted the collection this restore created");
            }
            Some(_) => {
                tracing::warn!(collection = %name, "not created by this restore; left untouched")
            }
        }
    }
    Ok(())
}

pub async fn run(
    node: &Node,
    target: &Target,
    req: &RestoreRequest,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<()> {
    if req.stage == Stage::Rollback {
        return rollback(node, req).await;
    }
    let store = target.store.clone();
    let m = or_cancelled(
        cancel,
        manifest::read(&*store, &target.prefix, &req.backup_name),
    )
    .await?;
    let version = node.qdrant.version().await?;
    if minor_version(&version).is_none()
        || minor_version(&version) != minor_version(&m.qdrant_version)
    {
        return Err(Error::VersionMismatch {
            backup: m.qdrant_version.clone(),
            target: version,
        });
    }
    let plan = select(&m, req)?;
    for (entry, _, objects) in &plan {
        if manifest::custom_sharded(&entry.config)
            && objects.iter().any(|o| o.mode == manifest::ObjectMode::File)
        {
            return Err(Error::Invalid(format!(
                "collection {:?} uses custom sharding and was backed up as a collection snapshot, which restores no shard key (and so no point); restore it with Qdrant's snapshot API",
                entry.name
            )));
        }
    }
    let create = req.create_collections && req.stage.creates();
    if create {
        // Refused before anything is touched.
        for (_, name, _) in &plan {
            if node.qdrant.collection(name).await?.is_some() {
                return Err(req.exists(name));
            }
        }
    }
    let root = keys::backup_root(&target.prefix, &req.backup_name);
    let total: u64 = plan
        .iter()
        .flat_map(|(_, _, objs)| objs.iter().map(|o| o.size))
        .sum();
    let count: usize = plan.iter().map(|(_, _, objs)| objs.len()).sum();
    let uploads = req.stage.uploads();
    progress.update(|t| {
        t.bytes_total = if uploads { total } else { 0 };
        t.shards_total = if uploads { count as u32 } else { 0 };
        t.qdrant_version = version.clone();
        t.node_name = node.name.clone();
    });
    if req.verify_first && req.stage.creates() {
        verify(&store, &root, &plan, req.concurrency, cancel).await?;
    }

    // Collections go at once, `concurrency` of them, sharing one budget of
    // `concurrency` objects in flight. The first failure stops the others.
    let created = std::sync::Mutex::new(Vec::<String>::new());
    let uploads = tokio::sync::Semaphore::new(req.concurrency.max(1));
    let work = cancel.child_token();
    let cx = Collection {
        node,
        store: &store,
        root: &root,
        req,
        progress,
        cancel: &work,
        created: &created,
        uploads: &uploads,
    };
    // By index: a closure over references to the plan's items would not be
    // general enough for the task's Send future.
    let (cx, plan) = (&cx, &plan);
    let results: Vec<Result<()>> = futures::stream::iter(0..plan.len())
        .map(|i| async move {
            let (entry, name, objects) = &plan[i];
            let r = restore_collection(cx, entry, name, objects).await;
            if r.is_err() {
                cx.cancel.cancel();
            }
            r
        })
        .buffer_unordered(req.concurrency.max(1))
        .collect()
        .await;
    // The error that stopped the others, not their cancellation.
    let mut errors: Vec<Error> = results.into_iter().filter_map(Result::err).collect();
    let first = errors
        .iter()
        .position(|e| !matches!(e, Error::Cancelled))
        .unwrap_or(0);
    let result = if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.swap_remove(first))
    };
    if let Err(e) = result {
        // Collections this task created hold a partial restore: remove them,
        // so nothing half-restored passes for the real thing.
        let created = created.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut removed = vec![];
        for c in &created {
            match node.qdrant.delete_collection(c).await {
                Ok(()) => removed.push(format!("{c:?}")),
                Err(de) => {
                    tracing::warn!(collection = %c, error = %de, "could not remove a partially restored collection");
                }
            }
        }
        if cancel.is_cancelled() {
            // Whatever the interrupted requests said ("body stream
            // cancelled"), what happened is the cancellation.
            let cleaned = match (removed.len(), created.len()) {
                (0, 0) => "no collection had been created yet".to_string(),
                (r, c) if r == c => format!(
                    "removed the collection{} it had created: {}",
                    if r == 1 { "" } else { "s" },
                    removed.join(", ")
                ),
                _ => format!(
                    "removed {} of the {} collections it had created ({}); see the log for the others",
                    removed.len(),
                    created.len(),
                    removed.join(", ")
                ),
            };
            return Err(Error::Interrupted(format!(
                "restore of {} cancelled; {cleaned}",
                req.backup_name
            )));
        }
        return Err(e);
    }
    Ok(())
}

type Plan<'a> = Vec<(&'a CollectionEntry, String, Vec<&'a ObjectEntry>)>;

/// The collections and objects to restore, with their target names.
fn select<'a>(m: &'a Manifest, req: &RestoreRequest) -> Result<Plan<'a>> {
    let wanted: Vec<(String, Vec<u32>)> = if req.collections.is_empty() {
        m.collections
            .iter()
            .map(|c| (c.name.clone(), vec![]))
            .collect()
    } else {
        req.collections.clone()
    };
    for old in req.rename.keys() {
        if !wanted.iter().any(|(c, _)| c == old) {
            let what = if req.from_cli {
                "--rename"
            } else {
                "spec.collectionMapping"
            };
            return Err(Error::Invalid(format!(
                "{what} names {old:?}, which is not being restored"
            )));
        }
    }
    let mut plan = Vec::new();
    for (c, shards) in wanted {
        let entry = m.collections.iter().find(|e| e.name == c).ok_or_else(|| {
            Error::Invalid(format!(
                "collection {c:?} is not in backup {}",
                m.backup_name
            ))
        })?;
        // A partial backup would restore "green" with points missing:
        // only shards asked for by id may be restored from one.
        if shards.is_empty()
            && let Some(why) = manifest::missing_shards(entry)
        {
            let partial = if req.from_cli {
                format!(
                    " Restore the shards it holds by id (--collection {c}:0,1,...) if a partial collection is what you want"
                )
            } else {
                String::new()
            };
            return Err(Error::Incomplete(format!(
                "backup {} does not hold all of collection {c:?}: {why}; nothing was restored.{partial}",
                m.backup_name
            )));
        }
        let name = req.rename.get(&c).cloned().unwrap_or_else(|| c.clone());
        keys::validate_segment("collection", &name)?;
        let objects: Vec<&ObjectEntry> = entry
            .objects
            .iter()
            .filter(|o| shards.is_empty() || o.shard_id.is_some_and(|s| shards.contains(&s)))
            .collect();
        if !shards.is_empty() && objects.len() != shards.len() {
            return Err(Error::Invalid(format!(
                "backup {} lacks some requested shards of {c:?}",
                m.backup_name
            )));
        }
        plan.push((entry, name, objects));
    }
    Ok(plan)
}

mod collection;
mod object;
mod ranged;
mod verify;
use collection::*;
use object::*;
use ranged::*;
pub(crate) use verify::verify_one;
use verify::*;

#[cfg(test)]
mod tests {
    use super::*;

    fn req(from_cli: bool, rename: &[(&str, &str)]) -> RestoreRequest {
        RestoreRequest {
            backup_name: "b1".into(),
            collections: vec![],
            rename: rename
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            verify_first: false,
            create_collections: true,
            restore_aliases: true,
            green_timeout: Duration::from_secs(1),
            concurrency: 1,
            stage: Stage::All,
            owner: String::new(),
            from_cli,
        }
    }

    /// A hint names what the person used: the CLI's flag, or the
    /// QdrantRestore's field, for the collection that was asked for.
    #[test]
    fn a_taken_name_is_refused_with_the_hint_of_the_front_end_used() {
        let cli = req(true, &[("docs", "docs-restored")]).exists("docs-restored");
        assert_eq!(
            cli.to_string(),
            "invalid input: collection \"docs-restored\" already exists in the target Qdrant; restore \"docs\" under another name (--rename docs=NEW) or delete \"docs-restored\" first"
        );
        let resource = req(false, &[("docs", "docs-restored")]).exists("docs-restored");
        assert!(
            resource
                .to_string()
                .contains("(spec.collectionMapping: {docs: NEW})"),
            "{resource}"
        );
        assert!(!resource.to_string().contains("--"), "{resource}");
        let plain = req(false, &[]).exists("docs");
        assert!(
            plain.to_string().contains(
                "restore \"docs\" under another name (spec.collectionMapping: {docs: NEW})"
            ),
            "{plain}"
        );
    }
}
