//! One job of a backup: a shard streamed, or a collection snapshot file
//! written by Qdrant, into one object of the store.

use super::*;

/// What every job of one backup shares.
pub(super) struct JobCtx<'a> {
    pub(super) node: &'a Node,
    pub(super) store: &'a Arc<dyn ObjectStore>,
    pub(super) root: &'a str,
    pub(super) peer_id: Option<u64>,
    pub(super) opts: &'a UploadOptions,
    pub(super) progress: &'a Progress,
    /// Cancelled by the first failing job, so its siblings stop too.
    pub(super) work: &'a CancellationToken,
}

/// Runs one job; its failure cancels its siblings.
pub(super) async fn guarded_job(cx: &JobCtx<'_>, job: Job) -> Result<(String, ObjectEntry)> {
    let r = run_job(cx, job).await;
    if r.is_err() {
        cx.work.cancel();
    }
    r
}

pub(super) async fn run_job(cx: &JobCtx<'_>, job: Job) -> Result<(String, ObjectEntry)> {
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
pub(super) fn snapshot_lock(c: &str) -> Arc<tokio::sync::Mutex<()>> {
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
pub(super) enum Snap {
    Collection,
    Shard(u32),
}

pub(super) async fn upload_collection_snapshot(
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
pub(super) async fn upload_file(
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
