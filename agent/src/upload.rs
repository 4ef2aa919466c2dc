//! Streams bytes of unknown length into a multipart upload: parts are cut
//! as the source is read, at most `concurrency` parts are in flight, and
//! sha256 is computed on the way. Memory is bounded by
//! (concurrency + 1) x part size whatever the stream's length, and all
//! uploads of the process together by one [`Budget`]: a part's bytes are
//! reserved before it is filled and freed when its upload ends, so
//! concurrency and part growth adapt to it; restores hold their share
//! ([`DOWNLOAD_HOLD`] per object in flight) from the same budget. Any
//! failure or cancel aborts the upload, so no orphaned parts stay behind.

use crate::error::{Error, Result};
use crate::keys::part_size;
use crate::store::{CompletedPart, ObjectStore};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use crate::budget::{Budget, DOWNLOAD_HOLD, MIN_BUDGET};

#[derive(Debug, Clone)]
pub struct UploadOptions {
    pub part_size: u64,
    pub concurrency: usize,
    /// What the part buffers may hold, shared with every other upload.
    pub budget: Option<Budget>,
    /// Longest wait for a free upload slot. Kept under Qdrant's 5-minute
    /// limit on a stalled snapshot reader, so a slow S3 ends in a clear error
    /// rather than a silently cut stream.
    pub slot_timeout: Duration,
    /// Longest silence from the source before the upload is failed.
    pub read_timeout: Duration,
}

impl UploadOptions {
    /// Refuses options whose first part could never fit the budget.
    pub fn check(&self) -> Result<()> {
        let first = part_size(self.part_size, 1);
        match &self.budget {
            Some(b) if first > b.bytes() => Err(b.too_small(first)),
            _ => Ok(()),
        }
    }
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            part_size: crate::defaults::PART_SIZE,
            concurrency: crate::defaults::CONCURRENCY,
            budget: Budget::installed(),
            slot_timeout: crate::defaults::STALL_TIMEOUT,
            read_timeout: crate::defaults::STALL_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOutcome {
    pub size: u64,
    pub sha256: String,
    pub parts: u32,
}

/// Upload ids this process is writing right now: stale-upload cleanup must
/// never abort a live upload of a concurrent task.
fn live() -> &'static Mutex<HashSet<String>> {
    static LIVE: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
}

pub fn is_live(upload_id: &str) -> bool {
    live().lock().map(|l| l.contains(upload_id)).unwrap_or(true)
}

struct LiveGuard(String);
impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Ok(mut l) = live().lock() {
            l.remove(&self.0);
        }
    }
}

/// Uploads `src` to `key`. `on_part` is called with the byte count of each
/// part once the store has acknowledged it.
pub async fn upload_stream<S>(
    store: Arc<dyn ObjectStore>,
    key: &str,
    src: S,
    opts: &UploadOptions,
    on_part: &(dyn Fn(u64) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<UploadOutcome>
where
    S: Stream<Item = Result<Bytes>> + Send + Unpin,
{
    opts.check()?;
    let id = store.create_multipart(key).await?;
    if let Ok(mut l) = live().lock() {
        l.insert(id.clone());
    }
    let _guard = LiveGuard(id.clone());
    tracing::debug!(key, "multipart upload started");
    let mut in_flight: JoinSet<PartResult> = JoinSet::new();
    let pumped = pump(&store, key, &id, src, opts, on_part, cancel, &mut in_flight).await;
    if pumped.is_err() {
        // A part request already sent may still succeed after an abort and
        // leave storage behind (S3 documents this), so let in-flight parts
        // end before aborting. They are bounded in size; the wait is bounded.
        let _ = tokio::time::timeout(opts.slot_timeout, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        in_flight.abort_all();
    }
    match pumped {
        Ok((parts, outcome)) => match store.complete_multipart(key, &id, parts).await {
            Ok(()) => {
                tracing::debug!(
                    key,
                    bytes = outcome.size,
                    parts = outcome.parts,
                    "multipart upload completed"
                );
                Ok(outcome)
            }
            Err(e) => {
                abort(&*store, key, &id).await;
                Err(e)
            }
        },
        Err(e) => {
            abort(&*store, key, &id).await;
            Err(e)
        }
    }
}

async fn abort(store: &dyn ObjectStore, key: &str, id: &str) {
    tracing::debug!(key, "aborting multipart upload");
    if let Err(e) = store.abort_multipart(key, id).await {
        tracing::warn!(key, error = %e, "could not abort multipart upload; the next task's stale-upload cleanup retries");
    }
}

type PartResult = Result<(CompletedPart, u64)>;

#[allow(clippy::too_many_arguments)]
async fn pump<S>(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    id: &str,
    mut src: S,
    opts: &UploadOptions,
    on_part: &(dyn Fn(u64) + Send + Sync),
    cancel: &CancellationToken,
    in_flight: &mut JoinSet<PartResult>,
) -> Result<(Vec<CompletedPart>, UploadOutcome)>
where
    S: Stream<Item = Result<Bytes>> + Send + Unpin,
{
    let concurrency = opts.concurrency.max(1);
    let mut hasher = Sha256::new();
    let mut done: Vec<CompletedPart> = Vec::new();
    let mut number: u32 = 1;
    // Parts grow with their number, never past the budget.
    let size_of = |n: u32| {
        let s = part_size(opts.part_size, n);
        opts.budget.as_ref().map_or(s, |b| s.min(b.bytes()))
    };
    // The bytes of the part being filled, reserved before it fills.
    let reserve = async |len: u64| match &opts.budget {
        None => Ok(None),
        Some(b) => b.reserve(len, opts.slot_timeout, cancel).await.map(Some),
    };
    let mut target = size_of(number) as usize;
    let mut held = reserve(target as u64).await?;
    let mut buf = BytesMut::with_capacity(target);
    let mut size: u64 = 0;

    let send = |data: Bytes,
                number: u32,
                held: Option<tokio::sync::OwnedSemaphorePermit>,
                in_flight: &mut JoinSet<PartResult>| {
        let store = store.clone();
        let (key, id) = (key.to_string(), id.to_string());
        let len = data.len() as u64;
        in_flight.spawn(async move {
            let part = store.upload_part(&key, &id, number as i32, data).await;
            // The part's memory is free once its upload ended.
            drop(held);
            Ok((part?, len))
        });
    };

    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            r = tokio::time::timeout(opts.read_timeout, src.next()) => r,
            // A part failing while we read must end the upload at once.
            Some(r) = in_flight.join_next(), if !in_flight.is_empty() => {
                finish_part(r, &mut done, on_part)?;
                continue;
            }
        };
        let chunk = match next {
            Err(_) => {
                return Err(Error::Stalled(format!(
                    "the source sent no data for {}s",
                    opts.read_timeout.as_secs()
                )));
            }
            Ok(None) => break,
            Ok(Some(chunk)) => chunk?,
        };
        hasher.update(&chunk);
        size += chunk.len() as u64;
        buf.extend_from_slice(&chunk);
        while buf.len() >= target {
            let part = buf.split_to(target).freeze();
            wait_for_slot(in_flight, concurrency, &mut done, opts, on_part, cancel).await?;
            send(part, number, held.take(), in_flight);
            number += 1;
            if number > crate::keys::MAX_PARTS {
                return Err(Error::Invalid(format!(
                    "{key}: object exceeds {} parts",
                    crate::keys::MAX_PARTS
                )));
            }
            target = size_of(number) as usize;
            held = reserve(target as u64).await?;
            buf.reserve(target.saturating_sub(buf.len()));
        }
    }
    // The last part may be short; an empty source still needs one part.
    if !buf.is_empty() || number == 1 {
        wait_for_slot(in_flight, concurrency, &mut done, opts, on_part, cancel).await?;
        send(buf.freeze(), number, held.take(), in_flight);
        number += 1;
    }
    wait_for_slot(in_flight, 1, &mut done, opts, on_part, cancel).await?;
    Ok((
        done,
        UploadOutcome {
            size,
            sha256: hex::encode(hasher.finalize()),
            parts: number - 1,
        },
    ))
}

/// Waits until fewer than `limit` parts are in flight (`limit` 1 = all done).
async fn wait_for_slot(
    in_flight: &mut JoinSet<PartResult>,
    limit: usize,
    done: &mut Vec<CompletedPart>,
    opts: &UploadOptions,
    on_part: &(dyn Fn(u64) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<()> {
    while in_flight.len() >= limit && !in_flight.is_empty() {
        tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            r = tokio::time::timeout(opts.slot_timeout, in_flight.join_next()) => match r {
                Err(_) => return Err(Error::Stalled(format!(
                    "no part upload finished in {}s; the object store is too slow to keep Qdrant's snapshot stream alive",
                    opts.slot_timeout.as_secs()
                ))),
                Ok(Some(r)) => finish_part(r, done, on_part)?,
                Ok(None) => break,
            }
        }
    }
    Ok(())
}

fn finish_part(
    r: std::result::Result<PartResult, tokio::task::JoinError>,
    done: &mut Vec<CompletedPart>,
    on_part: &(dyn Fn(u64) + Send + Sync),
) -> Result<()> {
    let (part, len) = r.map_err(|e| Error::Internal(format!("part upload task: {e}")))??;
    on_part(len);
    done.push(part);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LocalStore, get_all};

    fn chunks(total: usize, chunk: usize) -> impl Stream<Item = Result<Bytes>> + Unpin + Send {
        let data: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
        let v: Vec<Result<Bytes>> = data
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(v)
    }

    #[tokio::test]
    async fn uploads_bytes_in_order_with_their_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().into()));
        let total = 12 * 1024 * 1024 + 17;
        let opts = UploadOptions {
            part_size: 5 << 20,
            concurrency: 2,
            ..Default::default()
        };
        let counted = std::sync::atomic::AtomicU64::new(0);
        let out = upload_stream(
            store.clone(),
            "b/k",
            chunks(total, 64 * 1024 + 3),
            &opts,
            &|n| {
                counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            },
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        let expected: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
        assert_eq!(out.size, total as u64);
        assert_eq!(out.parts, 3);
        assert_eq!(out.sha256, hex::encode(Sha256::digest(&expected)));
        assert_eq!(counted.into_inner(), total as u64);
        assert_eq!(&get_all(&*store, "b/k").await.unwrap()[..], &expected[..]);
    }

    /// Counts the part bytes the store holds at once, and makes each part
    /// take a while so uploads overlap.
    struct Counting {
        inner: LocalStore,
        now: std::sync::atomic::AtomicU64,
        max: std::sync::atomic::AtomicU64,
    }

    #[async_trait::async_trait]
    impl ObjectStore for Counting {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        async fn create_multipart(&self, key: &str) -> Result<String> {
            self.inner.create_multipart(key).await
        }
        async fn upload_part(
            &self,
            k: &str,
            id: &str,
            n: i32,
            data: Bytes,
        ) -> Result<CompletedPart> {
            use std::sync::atomic::Ordering::SeqCst;
            let len = data.len() as u64;
            let held = self.now.fetch_add(len, SeqCst) + len;
            self.max.fetch_max(held, SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            let r = self.inner.upload_part(k, id, n, data).await;
            self.now.fetch_sub(len, SeqCst);
            r
        }
        async fn complete_multipart(&self, k: &str, id: &str, p: Vec<CompletedPart>) -> Result<()> {
            self.inner.complete_multipart(k, id, p).await
        }
        async fn abort_multipart(&self, k: &str, id: &str) -> Result<()> {
            self.inner.abort_multipart(k, id).await
        }
        async fn list_multipart(&self, p: &str) -> Result<Vec<crate::store::PendingUpload>> {
            self.inner.list_multipart(p).await
        }
        async fn put(&self, k: &str, d: Bytes) -> Result<()> {
            self.inner.put(k, d).await
        }
        async fn put_new(&self, k: &str, d: Bytes) -> Result<bool> {
            self.inner.put_new(k, d).await
        }
        async fn get(&self, k: &str, r: Option<(u64, u64)>) -> Result<crate::store::ByteStream> {
            self.inner.get(k, r).await
        }
        async fn head(&self, k: &str) -> Result<Option<u64>> {
            self.inner.head(k).await
        }
        async fn list(&self, p: &str) -> Result<Vec<crate::store::ObjectInfo>> {
            self.inner.list(p).await
        }
        async fn delete(&self, k: &str) -> Result<()> {
            self.inner.delete(k).await
        }
    }

    #[tokio::test]
    async fn uploads_together_stay_within_one_memory_budget() {
        let dir = tempfile::tempdir().unwrap();
        let counting = Arc::new(Counting {
            inner: LocalStore::new(dir.path().into()),
            now: 0.into(),
            max: 0.into(),
        });
        let store: Arc<dyn ObjectStore> = counting.clone();
        // Unbounded, three uploads of 4 parts in flight would hold 60 MiB.
        let opts = UploadOptions {
            part_size: 5 << 20,
            concurrency: 4,
            budget: Some(Budget::new(16 << 20)),
            ..Default::default()
        };
        let total = 20 << 20;
        let cancel = CancellationToken::new();
        let one = |k: &'static str| {
            upload_stream(
                store.clone(),
                k,
                chunks(total, 1 << 20),
                &opts,
                &|_| {},
                &cancel,
            )
        };
        let (a, b, c) = tokio::join!(one("b/a"), one("b/b"), one("b/c"));
        for r in [a, b, c] {
            assert_eq!(r.unwrap().size, total as u64);
        }
        let max = counting.max.load(std::sync::atomic::Ordering::SeqCst);
        assert!(max <= 16 << 20, "{max} bytes of parts held at once");
        assert!(max >= 10 << 20, "parts still overlap: {max}");
    }

    #[tokio::test]
    async fn a_part_larger_than_the_budget_is_refused_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().into()));
        let opts = UploadOptions {
            part_size: 64 << 20,
            budget: Some(Budget::new(16 << 20)),
            ..Default::default()
        };
        let err = upload_stream(
            store.clone(),
            "b/k",
            chunks(1 << 20, 1 << 20),
            &opts,
            &|_| {},
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("memory budget"), "{err}");
        assert!(store.list_multipart("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_broken_source_aborts_the_upload() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().into()));
        let src = chunks(6 << 20, 1 << 20).chain(futures::stream::iter(vec![Err(
            Error::Internal("connection reset".into()),
        )]));
        let err = upload_stream(
            store.clone(),
            "b/k",
            src,
            &UploadOptions::default(),
            &|_| {},
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("connection reset"));
        assert!(store.list_multipart("").await.unwrap().is_empty());
        assert_eq!(store.head("b/k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_silent_source_fails_as_stalled() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().into()));
        let src = chunks(1024, 1024).chain(futures::stream::pending());
        let opts = UploadOptions {
            read_timeout: Duration::from_millis(200),
            ..Default::default()
        };
        let err = upload_stream(
            store.clone(),
            "b/k",
            src,
            &opts,
            &|_| {},
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.reason(), "StreamStalled");
        assert!(store.list_multipart("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_empty_source_makes_an_empty_object() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().into()));
        let out = upload_stream(
            store.clone(),
            "e",
            chunks(0, 1),
            &UploadOptions::default(),
            &|_| {},
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!((out.size, out.parts), (0, 1));
        assert_eq!(store.head("e").await.unwrap(), Some(0));
    }
}
