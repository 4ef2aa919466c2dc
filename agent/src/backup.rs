//! The backup task: every requested shard this node holds, streamed live
//! from Qdrant into its own multipart upload, or written by Qdrant as a
//! shard snapshot file on the snapshots volume and uploaded from there (or,
//! in FILE mode, a collection snapshot file), each file deleted once
//! uploaded; then `manifest.json` last.

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

/// What every job of one backup shares.
struct JobCtx<'a> {
    node: &'a Node,
    store: &'a Arc<dyn ObjectStore>,
    root: &'a str,
    peer_id: Option<u64>,
    opts: &'a UploadOptions,
    progress: &'a Progress,
    /// Cancelled by the first failing job, so its siblings stop too.
    work: &'a CancellationToken,
}

/// Runs one job; its failure cancels its siblings.
async fn guarded_job(cx: &JobCtx<'_>, job: Job) -> Result<(String, ObjectEntry)> {
    let r = run_job(cx, job).await;
    if r.is_err() {
        cx.work.cancel();
    }
    r
}

async fn run_job(cx: &JobCtx<'_>, job: Job) -> Result<(String, ObjectEntry)> {
    let JobCtx {
        node,
        store,
        root,
        peer_id,
        opts,
        progress,
        work: cancel,
    } = *cx;
    let taken_at = now();
    let on_part = |n: u64| progress.add_bytes(n);
    let (collection, rel, shard_id, shard_key, mode, with, outcome) = match job {
        Job::Shard {
            collection,
            shard,
            shard_key,
            file,
        } => {
            let rel = keys::shard_rel_key(&node.name, &collection, shard);
            let key = keys::join(root, &rel);
            let out = if file {
                let (snap, named) = (Snap::Shard(shard), |_: &str| key.clone());
                upload_file(
                    node,
                    store,
                    named,
                    &collection,
                    snap,
                    opts,
                    &on_part,
                    cancel,
                )
                .await?
            } else {
                let src = match node.qdrant.stream_shard(&collection, shard).await {
                    // The shard exists (placement listed it): a 404 means this
                    // Qdrant predates the live shard snapshot endpoint.
                    Err(Error::Qdrant { status: 404, .. }) => {
                        return Err(Error::Invalid(format!(
                            "this Qdrant has no live shard snapshot endpoint (GET /collections/{collection}/shards/{shard}/snapshot); back up with --mode shard-file or --mode file"
                        )));
                    }
                    r => r?,
                };
                upload_stream(store.clone(), &key, src, opts, &on_part, cancel).await?
            };
            let with = if file { "shard-file" } else { "stream" };
            (
                collection,
                rel,
                Some(shard),
                shard_key,
                ObjectMode::Stream,
                with,
                out,
            )
        }
        Job::File { collection } => {
            // The key names the snapshot file, known once Qdrant wrote it.
            let (rel, out) =
                upload_collection_snapshot(node, store, root, &collection, opts, &on_part, cancel)
                    .await?;
            (collection, rel, None, None, ObjectMode::File, "file", out)
        }
    };
    progress.shard_done(ShardResult {
        collection: collection.clone(),
        shard_id,
        key: rel.clone(),
        size: outcome.size,
        sha256: outcome.sha256.clone(),
        mode: with.into(),
        done: true,
        taken_at: taken_at.clone(),
    });
    Ok((
        collection,
        ObjectEntry {
            key: rel,
            size: outcome.size,
            sha256: outcome.sha256,
            mode,
            shard_id,
            shard_key,
            node: node.name.clone(),
            peer_id,
            taken_at,
            taken_with: Some(with.into()),
        },
    ))
}

/// Two snapshots of one collection (or of one shard) in the same second
/// collide in Qdrant (the name holds the second), so each is taken and
/// uploaded one at a time.
fn snapshot_lock(c: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: std::sync::OnceLock<
        std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    > = std::sync::OnceLock::new();
    let mut m = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    m.entry(c.to_string()).or_default().clone()
}

/// A snapshot file Qdrant writes on the snapshots volume.
#[derive(Clone, Copy)]
enum Snap {
    Collection,
    Shard(u32),
}

async fn upload_collection_snapshot(
    node: &Node,
    store: &Arc<dyn ObjectStore>,
    root: &str,
    c: &str,
    opts: &UploadOptions,
    on_part: &(dyn Fn(u64) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<(String, crate::upload::UploadOutcome)> {
    let mut rel = String::new();
    let key = |name: &str| {
        rel = keys::file_rel_key(&node.name, c, name);
        keys::join(root, &rel)
    };
    let out = upload_file(node, store, key, c, Snap::Collection, opts, on_part, cancel).await?;
    Ok((rel, out))
}

/// Has Qdrant write the snapshot, uploads the file to the key `key` gives
/// for its name, checks Qdrant's checksum, and deletes the file whatever
/// happened (it is a copy of the data on the node's disk).
#[allow(clippy::too_many_arguments)]
async fn upload_file(
    node: &Node,
    store: &Arc<dyn ObjectStore>,
    key: impl FnOnce(&str) -> String,
    c: &str,
    snap: Snap,
    opts: &UploadOptions,
    on_part: &(dyn Fn(u64) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<crate::upload::UploadOutcome> {
    let dir = node
        .snapshots_dir
        .clone()
        .ok_or_else(|| Error::Invalid("no snapshots directory".into()))?;
    let lock = match snap {
        Snap::Collection => snapshot_lock(c),
        Snap::Shard(s) => snapshot_lock(&format!("{c}/shards/{s}")),
    };
    let _held = lock.lock().await;
    let q = &node.qdrant;
    let (desc, path) = match snap {
        Snap::Collection => {
            let d = q.create_collection_snapshot(c).await?;
            let p = dir.join(c).join(&d.name);
            (d, p)
        }
        Snap::Shard(s) => {
            let d = q.create_shard_snapshot(c, s).await?;
            let p = dir.join(c).join("shards").join(s.to_string()).join(&d.name);
            (d, p)
        }
    };
    node.note_snapshot(c, &desc.name);
    let result = async {
        keys::validate_segment("snapshot", &desc.name)?;
        let key = key(&desc.name);
        let file = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Invalid(format!(
                    "Qdrant wrote snapshot {}, but it is not at {}: the snapshots directory given is not Qdrant's; {SNAPSHOTS_HINT}",
                    desc.name,
                    path.display()
                ))
            } else {
                Error::io(&path, e)
            }
        })?;
        let p = path.clone();
        let src = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
            .map_err(move |e| Error::io(&p, e));
        let out = upload_stream(store.clone(), &key, src, opts, on_part, cancel).await?;
        if let Some(sum) = &desc.checksum
            && !sum.eq_ignore_ascii_case(&out.sha256)
        {
            let _ = store.delete(&key).await;
            return Err(Error::ChecksumMismatch {
                key,
                expected: sum.clone(),
                actual: out.sha256,
            });
        }
        Ok(out)
    }
    .await;
    let deleted = match snap {
        Snap::Collection => q.delete_collection_snapshot(c, &desc.name).await,
        Snap::Shard(s) => q.delete_shard_snapshot(c, s, &desc.name).await,
    };
    match deleted {
        Ok(()) => node.forget_snapshot(c, &desc.name),
        Err(e) => {
            tracing::warn!(collection = c, snapshot = %desc.name, error = %e, "could not delete the local snapshot");
        }
    }
    result
}

/// Where the snapshots directory is, said wherever a mistake about it is.
const SNAPSHOTS_HINT: &str = "it must be the directory Qdrant writes snapshots to (storage.snapshots_path in Qdrant's config: /qdrant/snapshots in Qdrant's image, ./snapshots beside a Qdrant started by hand), as this process sees it; --mode stream needs none";

/// Why the snapshots directory cannot be used, if it cannot.
fn snapshots_dir_unusable(dir: &std::path::Path) -> Option<String> {
    match std::fs::read_dir(dir) {
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some(format!("{} does not exist", dir.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Some(format!(
            "{} cannot be read by this process (run it with Qdrant's user or group)",
            dir.display()
        )),
        Err(e) => Some(format!("{}: {e}", dir.display())),
    }
}

/// Shard files when the snapshots volume has at least twice the
/// collection's estimated size `free` (under its size limit), the live
/// stream otherwise. Qdrant reports no on-disk size, so the estimate is
/// points x (dense vector bytes + 1 KiB payload/index).
pub fn auto_mode(free: Option<u64>, info: &Value) -> Mode {
    let Some(free) = free else {
        return Mode::Stream;
    };
    if free >= 2 * estimate_size(info) {
        Mode::ShardFile
    } else {
        Mode::Stream
    }
}

pub fn estimate_size(info: &Value) -> u64 {
    let points = info
        .get("points_count")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let vectors = info.pointer("/config/params/vectors");
    let dim_of = |v: &Value| v.get("size").and_then(Value::as_u64).unwrap_or(0);
    let dims: u64 = match vectors {
        Some(v) if v.get("size").is_some() => dim_of(v),
        Some(Value::Object(m)) => m.values().map(dim_of).sum(),
        _ => 0,
    };
    points.saturating_mul(dims * 4 + 1024)
}

/// Aborts multipart uploads this node left under `prefix` (a killed agent),
/// skipping those this process is writing now. Servers without
/// ListMultipartUploads get a warning, not a failed backup.
pub async fn abort_stale_uploads(store: &dyn ObjectStore, prefix: &str, node: &str) -> usize {
    let root = if prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", prefix.trim_end_matches('/'))
    };
    let pending = match store.list_multipart(&root).await {
        Ok(p) => p,
        Err(Error::Unsupported(_)) => {
            tracing::warn!(store = %store.describe(), "the object store does not list multipart uploads; stale uploads cannot be cleaned up");
            return 0;
        }
        Err(e) => {
            tracing::warn!(error = %e, "listing stale multipart uploads failed");
            return 0;
        }
    };
    let mut n = 0;
    for u in pending {
        let mine = u.key.strip_prefix(&root).and_then(|r| r.split('/').nth(1)) == Some(node);
        if mine && !crate::upload::is_live(&u.upload_id) {
            match store.abort_multipart(&u.key, &u.upload_id).await {
                Ok(()) => n += 1,
                Err(e) => {
                    tracing::warn!(key = %u.key, error = %e, "could not abort a stale upload")
                }
            }
        }
    }
    if n > 0 {
        tracing::info!(count = n, "aborted stale multipart uploads");
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn size_estimate_counts_named_and_unnamed_vectors() {
        let single = json!({"points_count": 1000, "config": {"params": {"vectors": {"size": 384, "distance": "Cosine"}}}});
        assert_eq!(estimate_size(&single), 1000 * (384 * 4 + 1024));
        let named = json!({"points_count": 10, "config": {"params": {"vectors": {
            "a": {"size": 4, "distance": "Dot"}, "b": {"size": 8, "distance": "Dot"}}}}});
        assert_eq!(estimate_size(&named), 10 * (12 * 4 + 1024));
        assert_eq!(estimate_size(&json!({})), 0);
    }
}
