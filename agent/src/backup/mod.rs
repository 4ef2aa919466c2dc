//! The backup task: every requested shard this node holds, streamed live
//! from Qdrant into its own multipart upload, or written by Qdrant as a
//! shard snapshot file on the snapshots volume and uploaded from there (or,
//! in FILE mode, a collection snapshot file), each file deleted once
//! uploaded; then `manifest.json` last.

mod cleanup;
mod job;
mod mode;
pub use cleanup::*;
use job::*;
pub use mode::*;

use crate::error::{Error, Result};
use crate::keys;
use crate::manifest::{self, CollectionEntry, Manifest, NodeEntry, ObjectEntry, ObjectMode};
use crate::node::{Node, Target};
use crate::progress::{Progress, now};
use crate::store::ObjectStore;
use crate::upload::{UploadOptions, upload_stream};
use futures::{StreamExt, TryStreamExt};
use qdrant_agent_proto::v1::{CollectionInfo, ShardResult};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each shard's live snapshot stream (no disk).
    Stream,
    /// Each shard's snapshot file, written by Qdrant, uploaded, deleted.
    ShardFile,
    /// One collection snapshot file per collection.
    File,
    /// `ShardFile` where the snapshots volume has room, else `Stream`.
    Auto,
}

#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub backup_name: String,
    /// (collection, shard ids); empty = all collections / all local shards.
    pub collections: Vec<(String, Vec<u32>)>,
    pub mode: Mode,
    pub upload: UploadOptions,
    pub shard_concurrency: usize,
    pub write_manifest: bool,
    /// Who writes the backup; the name is claimed for it before any upload
    /// (`manifest::claim`). Empty: only an existing manifest is refused.
    pub owner: String,
}

enum Job {
    Shard {
        collection: String,
        shard: u32,
        shard_key: Option<Value>,
        /// Through a shard snapshot file rather than the live stream.
        file: bool,
    },
    File {
        collection: String,
    },
}

pub async fn run(
    node: &Node,
    target: &Target,
    req: &BackupRequest,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Manifest> {
    keys::validate_segment("backup", &req.backup_name)?;
    keys::validate_segment("node", &node.name)?;
    // Before anything is touched: a first part larger than the whole
    // memory budget could never be filled.
    req.upload.check()?;
    let started_at = now();
    let store = target.store.clone();
    manifest::claim(&*store, &target.prefix, &req.backup_name, &req.owner).await?;
    let result = run_claimed(node, target, req, progress, cancel, started_at).await;
    // A backup this task commits itself is all its own: when it fails, its
    // claim goes too, whatever step failed, so the name can be used again.
    // (The controller, which commits multi-node backups, deletes the claim
    // with the rest.) A manifest another writer completed keeps its marker.
    if let Err(e) = &result
        && req.write_manifest
        && !req.owner.is_empty()
        && !matches!(e, Error::Exists(_))
    {
        let key = keys::owner_key(&target.prefix, &req.backup_name);
        if let Err(de) = store.delete(&key).await {
            tracing::warn!(key, error = %de, "could not release the failed backup's claim");
        }
    }
    result
}

async fn run_claimed(
    node: &Node,
    target: &Target,
    req: &BackupRequest,
    progress: &Progress,
    cancel: &CancellationToken,
    started_at: String,
) -> Result<Manifest> {
    let store = target.store.clone();
    abort_stale_uploads(&*store, &target.prefix, &node.name).await;

    let version = node.qdrant.version().await?;
    let peer_id = node.qdrant.peer_id().await?;
    let wanted: Vec<(String, Vec<u32>)> = if req.collections.is_empty() {
        node.qdrant
            .collections()
            .await?
            .into_iter()
            .map(|c| (c, vec![]))
            .collect()
    } else {
        req.collections.clone()
    };
    let aliases = node.qdrant.aliases().await?;

    // A snapshots directory that is missing or unreadable: auto mode
    // streams instead (and says so), the file modes refuse before anything.
    let unusable = node
        .snapshots_dir
        .as_deref()
        .and_then(snapshots_dir_unusable);
    if let (Some(why), Mode::Auto) = (&unusable, req.mode) {
        tracing::warn!(
            "the snapshots directory {why}: streaming every shard instead, which needs no disk"
        );
    }
    let mut entries = Vec::new();
    let mut jobs = Vec::new();
    for (c, shards) in &wanted {
        keys::validate_segment("collection", c)?;
        let info =
            node.qdrant.collection(c).await?.ok_or_else(|| {
                Error::Invalid(format!("collection {c:?} does not exist in Qdrant"))
            })?;
        let config = info.get("config").cloned().unwrap_or(Value::Null);
        // A collection snapshot of a custom-sharded collection restores into
        // a collection with no shards (Qdrant answers ok, with no point):
        // such collections are backed up shard by shard, with their keys.
        let custom = crate::manifest::custom_sharded(&config);
        let mode = match req.mode {
            Mode::Auto if unusable.is_some() => Mode::Stream,
            Mode::Auto => {
                let n = node.clone();
                let free = tokio::task::spawn_blocking(move || n.snapshots_free())
                    .await
                    .ok()
                    .flatten();
                auto_mode(free, &info)
            }
            Mode::File if custom => {
                return Err(Error::Invalid(format!(
                    "collection {c:?} uses custom sharding, whose keys a collection snapshot cannot restore; back it up with --mode stream"
                )));
            }
            m => m,
        };
        if matches!(mode, Mode::File | Mode::ShardFile) {
            if let Some(why) = &node.snapshots_elsewhere {
                return Err(Error::Invalid(format!(
                    "file and shard-file modes are off: {why}; back up with mode stream or auto"
                )));
            }
            if node.snapshots_dir.is_none() {
                return Err(Error::Invalid(format!(
                    "file and shard-file modes need the snapshots directory (--snapshots-dir): {SNAPSHOTS_HINT}"
                )));
            }
            if let Some(why) = &unusable {
                return Err(Error::Invalid(format!(
                    "the snapshots directory {why}: {SNAPSHOTS_HINT}"
                )));
            }
        }
        if mode == Mode::File {
            jobs.push(Job::File {
                collection: c.clone(),
            });
        } else {
            let placement = node.qdrant.placement(c).await?;
            let local: HashMap<u32, _> = placement
                .local_shards
                .iter()
                .map(|s| (s.shard_id, s))
                .collect();
            let ids: Vec<u32> = if shards.is_empty() {
                let mut v: Vec<u32> = local.keys().copied().collect();
                v.sort();
                v
            } else {
                shards.clone()
            };
            for id in ids {
                let s = local.get(&id).ok_or_else(|| {
                    Error::Invalid(format!(
                        "shard {id} of collection {c:?} is not held by this node"
                    ))
                })?;
                if s.state != "Active" {
                    return Err(Error::Invalid(format!(
                        "shard {id} of collection {c:?} is {} on this node, not Active",
                        s.state
                    )));
                }
                jobs.push(Job::Shard {
                    collection: c.clone(),
                    shard: id,
                    shard_key: s.shard_key.clone(),
                    file: mode == Mode::ShardFile,
                });
            }
        }
        let mut names: Vec<String> = aliases
            .iter()
            .filter(|a| &a.collection_name == c)
            .map(|a| a.alias_name.clone())
            .collect();
        names.sort();
        entries.push(CollectionEntry {
            name: c.clone(),
            config,
            aliases: names,
            objects: vec![],
            placement: vec![],
        });
    }

    progress.update(|t| {
        t.shards_total = jobs.len() as u32;
        t.qdrant_version = version.clone();
        t.peer_id = peer_id.unwrap_or(0);
        t.node_name = node.name.clone();
        t.collections = entries
            .iter()
            .map(|e| CollectionInfo {
                name: e.name.clone(),
                config_json: e.config.to_string(),
                aliases: e.aliases.clone(),
            })
            .collect();
    });

    let root = keys::backup_root(&target.prefix, &req.backup_name);
    let planned: Vec<String> = jobs
        .iter()
        .filter_map(|j| match j {
            Job::Shard {
                collection, shard, ..
            } => Some(keys::join(
                &root,
                &keys::shard_rel_key(&node.name, collection, *shard),
            )),
            Job::File { .. } => None,
        })
        .collect();
    let work = cancel.child_token();
    let cx = JobCtx {
        node,
        store: &store,
        root: &root,
        peer_id,
        opts: &req.upload,
        progress,
        work: &work,
    };
    let results: Vec<Result<(String, ObjectEntry)>> = futures::stream::iter(jobs)
        .map(|job| guarded_job(&cx, job))
        .buffer_unordered(req.shard_concurrency.max(1))
        .collect()
        .await;

    let mut done = Vec::new();
    let mut first_err = None;
    for r in results {
        match r {
            Ok(x) => done.push(x),
            Err(e) if first_err.is_none() || matches!(first_err, Some(Error::Cancelled)) => {
                first_err = Some(e)
            }
            Err(_) => {}
        }
    }
    if let Some(e) = first_err {
        // A failed backup must not leave objects that look like data. Every
        // planned key is deleted, not only those seen to finish: a complete
        // whose answer was lost may still have created its object.
        let mut doomed: Vec<String> = done
            .iter()
            .map(|(_, o)| keys::join(&root, &o.key))
            .collect();
        doomed.extend(planned);
        doomed.sort();
        doomed.dedup();
        let mut left = 0;
        for key in doomed {
            if let Err(de) = store.delete(&key).await {
                left += 1;
                tracing::warn!(key, error = %de, "could not delete an object of the failed backup");
            }
        }
        if cancel.is_cancelled() {
            let cleaned = if left == 0 {
                "its open uploads were aborted and every object it had written deleted".to_string()
            } else {
                format!("{left} of its objects could not be deleted (see the log)")
            };
            return Err(Error::Interrupted(format!(
                "backup {} cancelled; {cleaned}",
                req.backup_name
            )));
        }
        return Err(e);
    }
    for (c, o) in done {
        if let Some(e) = entries.iter_mut().find(|e| e.name == c) {
            e.objects.push(o);
        }
    }
    for e in &mut entries {
        e.objects.sort_by(|a, b| a.key.cmp(&b.key));
    }
    let m = Manifest {
        format: manifest::FORMAT,
        backup_name: req.backup_name.clone(),
        qdrant_version: version,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at,
        completed_at: now(),
        nodes: vec![NodeEntry {
            node: node.name.clone(),
            peer_id,
        }],
        collections: entries,
    };
    if req.write_manifest {
        let key = manifest::write(&*store, &target.prefix, &m).await?;
        progress.update(|t| t.manifest_key = key);
    }
    Ok(m)
}

#[cfg(test)]
mod tests;
