//! One shard object into Qdrant: streamed into the shard snapshot upload
//! with its sha256 checked on the way, or (FILE mode) downloaded with
//! parallel ranged GETs onto the snapshots volume and recovered from there.

use super::*;

pub(super) async fn upload_objects(
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

pub(super) struct ObjCtx<'a> {
    node: &'a Node,
    store: &'a Arc<dyn ObjectStore>,
    root: &'a str,
    name: &'a str,
    shard_map: &'a HashMap<u32, u32>,
    progress: &'a Progress,
    cancel: &'a CancellationToken,
    uploads: &'a tokio::sync::Semaphore,
}

pub(super) async fn restore_object(cx: &ObjCtx<'_>, o: &ObjectEntry) -> Result<()> {
    let _slot = tokio::select! {
        p = cx.uploads.acquire() => p.map_err(|_| Error::Cancelled)?,
        _ = cx.cancel.cancelled() => return Err(Error::Cancelled),
    };
    let key = keys::join(cx.root, &o.key);
    // Downloads draw on the agent's one memory budget, as uploads do. A
    // large streamed object is read with parallel ranged GETs when the
    // budget has room for their window now, else with one GET.
    let large = o.mode == ObjectMode::Stream && o.size >= 2 * stream_range();
    let hold = crate::upload::DOWNLOAD_HOLD;
    let (ranged, _memory) = match crate::upload::Budget::installed() {
        None => (large, None),
        Some(b) if large => match b.try_hold(ranged_hold(stream_range(), STREAM_WINDOW)) {
            Some(window) => (true, Some(window)),
            None => (false, Some(b.hold(hold, cx.cancel).await?)),
        },
        Some(b) => {
            let streams = match o.mode {
                ObjectMode::Stream => 1,
                ObjectMode::File => RANGES_AT_ONCE as u64,
            };
            (false, Some(b.hold(streams * hold, cx.cancel).await?))
        }
    };
    match o.mode {
        ObjectMode::Stream => {
            let from = o
                .shard_id
                .ok_or_else(|| Error::Invalid(format!("{key} has no shard id")))?;
            let to = *cx.shard_map.get(&from).unwrap_or(&from);
            let verdict = Verdict::default();
            let source = if ranged {
                tracing::debug!(key = %o.key, size = o.size, range = stream_range(), "reading the object in ranges");
                ranged_stream(
                    of_store(cx.store.clone(), key.clone()),
                    key.clone(),
                    o.size,
                    stream_range(),
                    STREAM_WINDOW,
                    cx.cancel.clone(),
                )
            } else {
                or_cancelled(cx.cancel, cx.store.get(&key, None)).await?
            };
            let body = checked_stream(
                source,
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

/// Passes the object's bytes through a bounded channel (reqwest bodies must
/// be `Sync`; the S3 stream is not), counting and hashing them. It ends in
/// an error instead of a clean end when the bytes differ from the manifest,
/// so Qdrant receives a broken upload rather than a bad snapshot.
/// Why a checked stream broke off, for the caller whose request carried it.
#[derive(Clone, Default)]
pub(super) struct Verdict(Arc<std::sync::Mutex<Option<Error>>>);

impl Verdict {
    fn set(&self, e: Error) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
    fn take(&self) -> Option<Error> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

pub(super) fn checked_stream(
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
pub(super) async fn recover_from_file(
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

pub(super) const RANGE: u64 = 16 << 20;
/// Ranged GETs of one FILE-mode object in flight.
pub(super) const RANGES_AT_ONCE: usize = 4;

pub(super) async fn download_ranged(
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

pub(super) async fn download_range(
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
