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

/// Reads every object once and compares size and sha256 with the manifest.
async fn verify(
    store: &Arc<dyn ObjectStore>,
    root: &str,
    plan: &Plan<'_>,
    concurrency: usize,
    cancel: &CancellationToken,
) -> Result<()> {
    let objects: Vec<ObjectEntry> = plan
        .iter()
        .flat_map(|(_, _, o)| o.iter().map(|o| (*o).clone()))
        .collect();
    futures::stream::iter(objects)
        .map(|o| async move { verify_one(store, root, &o, cancel).await })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

pub(crate) async fn verify_one(
    store: &Arc<dyn ObjectStore>,
    root: &str,
    o: &ObjectEntry,
    cancel: &CancellationToken,
) -> Result<()> {
    let key = keys::join(root, &o.key);
    let stream = or_cancelled(cancel, store.get(&key, None)).await?;
    let (size, sum) = hash_stream(stream, cancel).await?;
    if size != o.size || sum != o.sha256 {
        return Err(Error::ChecksumMismatch {
            key,
            expected: o.sha256.clone(),
            actual: sum,
        });
    }
    Ok(())
}

async fn hash_stream(mut s: ByteStream, cancel: &CancellationToken) -> Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut n = 0u64;
    loop {
        let chunk = tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            c = s.next() => c,
        };
        match chunk {
            Some(c) => {
                let c = c?;
                n += c.len() as u64;
                h.update(&c);
            }
            None => return Ok((n, hex::encode(h.finalize()))),
        }
    }
}

#[allow(clippy::too_many_arguments)]
/// What every collection of one restore shares.
struct Collection<'a> {
    node: &'a Node,
    store: &'a Arc<dyn ObjectStore>,
    root: &'a str,
    req: &'a RestoreRequest,
    progress: &'a Progress,
    cancel: &'a CancellationToken,
    /// The collections this restore created, for the rollback.
    created: &'a std::sync::Mutex<Vec<String>>,
    /// Objects in flight into Qdrant, across collections.
    uploads: &'a tokio::sync::Semaphore,
}

async fn restore_collection(
    cx: &Collection<'_>,
    entry: &CollectionEntry,
    name: &str,
    objects: &[&ObjectEntry],
) -> Result<()> {
    let Collection {
        node, req, cancel, ..
    } = *cx;
    let q = &node.qdrant;
    let mut shard_map: HashMap<u32, u32> = objects
        .iter()
        .filter_map(|o| o.shard_id)
        .map(|s| (s, s))
        .collect();
    if req.create_collections && req.stage.creates() {
        // Another restore may have created it since the check above: 409,
        // and this restore touches nothing of it.
        q.create_collection(name, &create_body(&entry.config, &req.owner)?)
            .await
            .map_err(|e| match e {
                Error::Qdrant { status: 409, .. } => req.exists(name),
                e => e,
            })?;
        cx.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_string());
        cx.progress
            .update(|t| t.created_collections.push(name.to_string()));
        if manifest::custom_sharded(&entry.config) {
            shard_map = create_shard_keys(node, name, entry).await?;
        }
        if req.stage == Stage::Create {
            // The next stage plans uploads on Active replicas: a replica
            // Qdrant is still initializing would have none to go to.
            wait_green(node, name, req.green_timeout, cancel).await?;
        }
    }
    if req.stage.uploads() {
        upload_objects(cx, name, objects, &shard_map).await?;
    }
    if req.stage.finishes() {
        if req.restore_aliases {
            restore_aliases(node, &entry.aliases, name).await?;
        }
        wait_green(node, name, req.green_timeout, cancel).await?;
        release(node, name, &req.owner).await?;
    }
    Ok(())
}

/// The body that creates a collection from its saved config, marked as
/// this owner's (a marker the backup may hold from its own restore is
/// dropped).
fn create_body(config: &serde_json::Value, owner: &str) -> Result<serde_json::Value> {
    let mut body = create_body_from_config(config)?;
    if let Some(m) = body.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove(OWNER_KEY);
    }
    if !owner.is_empty() {
        let Some(b) = body.as_object_mut() else {
            return Ok(body);
        };
        let m = b.entry("metadata").or_insert_with(|| serde_json::json!({}));
        if !m.is_object() {
            *m = serde_json::json!({});
        }
        if let Some(m) = m.as_object_mut() {
            m.insert(OWNER_KEY.into(), owner.into());
        }
    }
    Ok(body)
}

/// The restore is done: the collection is no longer this owner's to roll
/// back, so its marker goes.
async fn release(node: &Node, name: &str, owner: &str) -> Result<()> {
    if owner.is_empty() {
        return Ok(());
    }
    let info = node.qdrant.collection(name).await?;
    if info.as_ref().and_then(owner_of) == Some(owner) {
        node.qdrant
            .patch_metadata(name, serde_json::json!({ OWNER_KEY: null }))
            .await?;
    }
    Ok(())
}

async fn upload_objects(
    cx: &Collection<'_>,
    name: &str,
    objects: &[&ObjectEntry],
    shard_map: &HashMap<u32, u32>,
) -> Result<()> {
    let Collection {
        node,
        store,
        root,
        req,
        progress,
        cancel,
        uploads,
        ..
    } = *cx;
    let q = &node.qdrant;
    let before: Vec<String> = q
        .list_collection_snapshots(name)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.name)
        .collect();

    let ctx = ObjCtx {
        node,
        store,
        root,
        name,
        shard_map,
        progress,
        cancel,
        uploads,
    };
    let owned: Vec<ObjectEntry> = objects.iter().map(|o| (*o).clone()).collect();
    let ctx = &ctx;
    let result = futures::stream::iter(owned)
        .map(|o| async move { restore_object(ctx, &o).await })
        .buffer_unordered(req.concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await;

    // Qdrant may keep uploaded snapshots in its snapshots dir: remove the
    // ones this restore added, whatever the outcome.
    if let Ok(after) = q.list_collection_snapshots(name).await {
        for s in after.into_iter().filter(|s| !before.contains(&s.name)) {
            let _ = q.delete_collection_snapshot(name, &s.name).await;
        }
    }
    result.map(|_| ())
}

struct ObjCtx<'a> {
    node: &'a Node,
    store: &'a Arc<dyn ObjectStore>,
    root: &'a str,
    name: &'a str,
    shard_map: &'a HashMap<u32, u32>,
    progress: &'a Progress,
    cancel: &'a CancellationToken,
    uploads: &'a tokio::sync::Semaphore,
}

async fn restore_object(cx: &ObjCtx<'_>, o: &ObjectEntry) -> Result<()> {
    let _slot = tokio::select! {
        p = cx.uploads.acquire() => p.map_err(|_| Error::Cancelled)?,
        _ = cx.cancel.cancelled() => return Err(Error::Cancelled),
    };
    let key = keys::join(cx.root, &o.key);
    // Downloads draw on the agent's one memory budget, as uploads do.
    let streams = match o.mode {
        ObjectMode::Stream => 1,
        ObjectMode::File => RANGES_AT_ONCE as u64,
    };
    let _memory = match crate::upload::Budget::installed() {
        Some(b) => Some(
            b.hold(streams * crate::upload::DOWNLOAD_HOLD, cx.cancel)
                .await?,
        ),
        None => None,
    };
    match o.mode {
        ObjectMode::Stream => {
            let from = o
                .shard_id
                .ok_or_else(|| Error::Invalid(format!("{key} has no shard id")))?;
            let to = *cx.shard_map.get(&from).unwrap_or(&from);
            let verdict = Verdict::default();
            let body = checked_stream(
                or_cancelled(cx.cancel, cx.store.get(&key, None)).await?,
                o,
                cx.progress.clone(),
                cx.cancel.clone(),
                verdict.clone(),
            );
            let others = or_cancelled(cx.cancel, cx.node.qdrant.placement(cx.name))
                .await?
                .other_active(to);
            let sent = cx
                .node
                .qdrant
                .upload_shard(cx.name, to, body, o.size, &o.sha256)
                .await;
            // A mismatch found in flight breaks the upload's body: say that,
            // not that Qdrant failed.
            if let Err(e) = sent {
                return Err(verdict.take().unwrap_or(e));
            }
            wait_sync_started(cx.node, cx.name, to, &others, cx.cancel).await?;
        }
        ObjectMode::File => {
            recover_from_file(cx.node, cx.store, &key, cx.name, o, cx.progress, cx.cancel).await?
        }
    }
    cx.progress.shard_done(ShardResult {
        collection: cx.name.to_string(),
        shard_id: o.shard_id,
        key: o.key.clone(),
        size: o.size,
        sha256: o.sha256.clone(),
        mode: o.mode.as_str().into(),
        done: true,
        taken_at: o.taken_at.clone(),
    });
    Ok(())
}

/// Re-creates the backup's aliases for `name`. An alias that already points
/// at another collection is live traffic's: it is left alone, with a warning.
async fn restore_aliases(node: &Node, aliases: &[String], name: &str) -> Result<()> {
    if aliases.is_empty() {
        return Ok(());
    }
    let existing = node.qdrant.aliases().await?;
    for a in aliases {
        match existing.iter().find(|e| &e.alias_name == a) {
            Some(e) if e.collection_name == name => {}
            Some(e) => {
                tracing::warn!(alias = %a, points_to = %e.collection_name, restored = name, "alias exists and points elsewhere; left unchanged")
            }
            None => node.qdrant.create_alias(a, name).await?,
        }
    }
    Ok(())
}

/// Custom-sharded collections need their shard keys before their shards.
/// Keys are created in the order of their first shard id, and each backed-up
/// shard is mapped to the new shard of the same key in the same position.
async fn create_shard_keys(
    node: &Node,
    name: &str,
    entry: &CollectionEntry,
) -> Result<HashMap<u32, u32>> {
    let mut by_key: BTreeMap<u32, (Value, Vec<u32>)> = BTreeMap::new();
    let mut firsts: HashMap<String, u32> = HashMap::new();
    for o in &entry.objects {
        if let (Some(id), Some(k)) = (o.shard_id, &o.shard_key) {
            let first = *firsts.entry(k.to_string()).or_insert(id);
            let slot = by_key.entry(first).or_insert_with(|| (k.clone(), vec![]));
            slot.1.push(id);
        }
    }
    for (k, _) in by_key.values() {
        node.qdrant.create_shard_key(name, k).await?;
    }
    let placement = node.qdrant.placement(name).await?;
    let mut map = HashMap::new();
    for (k, old) in by_key.values_mut() {
        let mut new: Vec<u32> = placement
            .local_shards
            .iter()
            .filter(|s| s.shard_key.as_ref() == Some(&*k))
            .map(|s| s.shard_id)
            .collect();
        old.sort();
        new.sort();
        for (o, n) in old.iter().zip(new) {
            map.insert(*o, n);
        }
    }
    Ok(map)
}

/// Passes the object's bytes through a bounded channel (reqwest bodies must
/// be `Sync`; the S3 stream is not), counting and hashing them. It ends in
/// an error instead of a clean end when the bytes differ from the manifest,
/// so Qdrant receives a broken upload rather than a bad snapshot.
/// Why a checked stream broke off, for the caller whose request carried it.
#[derive(Clone, Default)]
struct Verdict(Arc<std::sync::Mutex<Option<Error>>>);

impl Verdict {
    fn set(&self, e: Error) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
    fn take(&self) -> Option<Error> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

fn checked_stream(
    mut src: ByteStream,
    o: &ObjectEntry,
    progress: Progress,
    cancel: CancellationToken,
    verdict: Verdict,
) -> impl futures::Stream<Item = Result<Bytes>> + Send + Sync + 'static {
    let (key, want_size, want_sum) = (o.key.clone(), o.size, o.sha256.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(8);
    tokio::spawn(async move {
        let mut h = Sha256::new();
        let mut n = 0u64;
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => Some(Err(Error::Cancelled)),
                _ = tx.closed() => return,
                c = src.next() => c,
            };
            let item = match next {
                Some(Ok(c)) => {
                    h.update(&c);
                    n += c.len() as u64;
                    progress.add_bytes(c.len() as u64);
                    Ok(c)
                }
                Some(Err(e)) => Err(e),
                None => {
                    let sum = hex::encode(h.finalize());
                    if n != want_size || sum != want_sum {
                        let mismatch = || Error::ChecksumMismatch {
                            key: key.clone(),
                            expected: want_sum.clone(),
                            actual: sum.clone(),
                        };
                        verdict.set(mismatch());
                        let _ = tx.send(Err(mismatch())).await;
                    }
                    return;
                }
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// FILE-mode objects: concurrent ranged GETs into the snapshots volume,
/// checked, recovered by Qdrant from the file, and the file removed.
async fn recover_from_file(
    node: &Node,
    store: &Arc<dyn ObjectStore>,
    key: &str,
    collection: &str,
    o: &ObjectEntry,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<()> {
    let dir = node.snapshots_dir.clone().ok_or_else(|| {
        Error::Invalid("restoring a FILE-mode backup needs --snapshots-dir".into())
    })?;
    let rel = std::path::PathBuf::from(collection)
        .join(format!("restore-{:016x}.snapshot", rand::random::<u64>()));
    let path = dir.join(&rel);
    let result = async {
        download_ranged(store, key, &path, o.size, progress, cancel).await?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Error::io(&path, e))?;
        let p = path.clone();
        let s = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
            .map_err(move |e| Error::io(&p, e))
            .boxed();
        let (_, sum) = hash_stream(s, cancel).await?;
        if sum != o.sha256 {
            return Err(Error::ChecksumMismatch {
                key: key.into(),
                expected: o.sha256.clone(),
                actual: sum,
            });
        }
        let qpath = node.qdrant_path(&rel).unwrap_or(path.clone());
        node.qdrant
            .recover_collection(
                collection,
                &format!("file://{}", qpath.display()),
                &o.sha256,
            )
            .await
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    result
}

const RANGE: u64 = 16 << 20;
/// Ranged GETs of one FILE-mode object in flight.
const RANGES_AT_ONCE: usize = 4;

async fn download_ranged(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    path: &std::path::Path,
    size: u64,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<()> {
    if let Some(d) = path.parent() {
        tokio::fs::create_dir_all(d)
            .await
            .map_err(|e| Error::io(d, e))?;
    }
    let file = tokio::fs::File::create(path)
        .await
        .map_err(|e| Error::io(path, e))?;
    file.set_len(size).await.map_err(|e| Error::io(path, e))?;
    drop(file);
    let ranges: Vec<(u64, u64)> = (0..size.div_ceil(RANGE))
        .map(|i| (i * RANGE, ((i + 1) * RANGE).min(size)))
        .collect();
    futures::stream::iter(ranges)
        .map(|r| download_range(store, key, path, r, progress, cancel))
        .buffer_unordered(RANGES_AT_ONCE)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn download_range(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    path: &std::path::Path,
    (start, end): (u64, u64),
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<()> {
    use tokio::io::AsyncSeekExt;
    let mut s = or_cancelled(cancel, store.get(key, Some((start, end)))).await?;
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .await
        .map_err(|e| Error::io(path, e))?;
    f.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| Error::io(path, e))?;
    loop {
        let c = tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            c = s.next() => c,
        };
        let Some(c) = c else { break };
        let c = c?;
        f.write_all(&c).await.map_err(|e| Error::io(path, e))?;
        progress.add_bytes(c.len() as u64);
    }
    f.flush().await.map_err(|e| Error::io(path, e))
}

/// Whether every replica of every shard is Active: after a shard upload,
/// Qdrant copies it to the other replicas, which pass through Partial.
/// The replicas of collection `name` that are not Active, as
/// "shard 2 on peer 7: Initializing".
async fn not_active(node: &Node, name: &str) -> Result<Vec<String>> {
    let p = node.qdrant.placement(name).await?;
    let local = p
        .local_shards
        .iter()
        .map(|s| (s.shard_id, p.peer_id, &s.state));
    let remote = p
        .remote_shards
        .iter()
        .map(|s| (s.shard_id, s.peer_id, &s.state));
    Ok(local
        .chain(remote)
        .filter(|(_, _, state)| *state != "Active")
        .map(|(shard, peer, state)| format!("shard {shard} on peer {peer}: {state}"))
        .collect())
}

/// After a shard upload with `priority=snapshot`, Qdrant marks the other
/// replicas that were Active as Dead through a consensus proposal it does
/// not wait for, then syncs them from the restored one. Until then they
/// still say Active, with their old (empty) data: wait until each has left
/// Active or is receiving a transfer, so a later "every replica Active"
/// means synced.
async fn wait_sync_started(
    node: &Node,
    name: &str,
    shard: u32,
    others: &[u64],
    cancel: &CancellationToken,
) -> Result<()> {
    let mut pending: Vec<u64> = others.to_vec();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        let p = node.qdrant.placement(name).await?;
        pending.retain(|peer| {
            let syncing = p
                .shard_transfers
                .iter()
                .any(|t| t.shard_id == shard && t.to == *peer);
            let active = p
                .remote_shards
                .iter()
                .any(|r| r.shard_id == shard && r.peer_id == *peer && r.state == "Active");
            active && !syncing
        });
        if pending.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "the other replicas of shard {shard} of {name} (peers {pending:?}) did not start syncing from the restored one within 60s"
            )));
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    Ok(())
}

async fn wait_green(
    node: &Node,
    name: &str,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<()> {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut said = started;
    let mut delay = Duration::from_millis(100);
    loop {
        let status = node
            .qdrant
            .collection(name)
            .await?
            .and_then(|v| v.get("status").and_then(Value::as_str).map(str::to_string));
        match status.as_deref() {
            // Grey: optimizations pending until the next update (common after
            // a restart, and so in a restore of such a collection). Every point
            // is there; waiting for green would wait forever.
            Some("green" | "grey") => {
                let waiting = not_active(node, name).await?;
                if waiting.is_empty() {
                    return Ok(());
                }
                // What a long wait waits for, in the log every 30 s.
                if said.elapsed() >= Duration::from_secs(30) {
                    said = tokio::time::Instant::now();
                    tracing::info!(collection = %name, waited_s = started.elapsed().as_secs(), replicas = %waiting.join(", "), "waiting for every replica to be Active");
                }
            }
            Some("red") => {
                return Err(Error::Qdrant {
                    what: format!("collection {name} after restore"),
                    status: 200,
                    detail: "collection status is red".into(),
                });
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "collection {name} did not turn green (or grey) with every replica Active within {}s (status {status:?})",
                timeout.as_secs()
            )));
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

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
