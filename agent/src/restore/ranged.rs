//! One large shard object read with parallel ranged GETs, in order: a
//! window of ranges in flight, each buffered whole (and fetched again whole
//! if its connection breaks), handed on in key order. The stream that
//! feeds Qdrant's upload is then no slower than the store allows, and the
//! download overlaps the upload instead of waiting on one connection.

use super::*;

/// One ranged GET of a streamed object.
pub(super) const STREAM_RANGE: u64 = 8 << 20;

/// The size of a ranged GET: `QDRANT_AGENT_RANGE_SIZE` (a size such as
/// `4MiB`, at least 16 KiB; for tuning), else [`STREAM_RANGE`]. Objects
/// under two of them are read with one GET.
pub(super) fn stream_range() -> u64 {
    static RANGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *RANGE.get_or_init(|| {
        std::env::var("QDRANT_AGENT_RANGE_SIZE")
            .ok()
            .and_then(|v| crate::units::parse_size(&v).ok())
            .filter(|n| *n >= 16 << 10)
            .unwrap_or(STREAM_RANGE)
    })
}
/// Ranged GETs of one object in flight.
pub(super) const STREAM_WINDOW: usize = 4;
/// Tries of one range before the object fails.
const RANGE_TRIES: u32 = 3;

/// What a ranged read holds at most: the window in flight, and the ranges
/// whose chunks are on their way to Qdrant.
pub(super) fn ranged_hold(range: u64, window: usize) -> u64 {
    range * (window as u64 + 2)
}

/// Fetches `[start, end)` of one object.
pub(super) type GetRange =
    Arc<dyn Fn(u64, u64) -> futures::future::BoxFuture<'static, Result<ByteStream>> + Send + Sync>;

/// Ranged GETs of `key` in `store`.
pub(super) fn of_store(store: Arc<dyn ObjectStore>, key: String) -> GetRange {
    Arc::new(move |start, end| {
        let (store, key) = (store.clone(), key.clone());
        Box::pin(async move { store.get(&key, Some((start, end))).await })
    })
}

/// The object `key` of `size` bytes, as ranges of `range` bytes with
/// `window` of them fetched at once, yielded in order.
pub(super) fn ranged_stream(
    get: GetRange,
    key: String,
    size: u64,
    range: u64,
    window: usize,
    cancel: CancellationToken,
) -> ByteStream {
    let range = range.max(1);
    let ranges = (0..size.div_ceil(range)).map(move |i| (i * range, ((i + 1) * range).min(size)));
    futures::stream::iter(ranges)
        .map(move |r| {
            let (get, key, cancel) = (get.clone(), key.clone(), cancel.clone());
            async move { fetch_range(&get, &key, r, &cancel).await }
        })
        .buffered(window.max(1))
        .map_ok(|chunks| futures::stream::iter(chunks.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
}

async fn fetch_range(
    get: &GetRange,
    key: &str,
    r: (u64, u64),
    cancel: &CancellationToken,
) -> Result<Vec<Bytes>> {
    let mut tries = 0;
    loop {
        tries += 1;
        match read_range(get, key, r, cancel).await {
            Err(e) if tries < RANGE_TRIES && transient(&e) => {
                tracing::debug!(key, start = r.0, error = %e, "fetching the range again");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(tries))).await;
            }
            other => return other,
        }
    }
}

/// A broken connection or a busy store: worth another GET of the range.
fn transient(e: &Error) -> bool {
    matches!(
        e.reason(),
        "S3Unreachable" | "S3Unavailable" | "ShortRead" | "StreamStalled" | "Timeout"
    )
}

async fn read_range(
    get: &GetRange,
    key: &str,
    (start, end): (u64, u64),
    cancel: &CancellationToken,
) -> Result<Vec<Bytes>> {
    // The chunks as they came: no copy, the range is handed on as read.
    let mut s = or_cancelled(cancel, get(start, end)).await?;
    let (mut chunks, mut len) = (vec![], 0u64);
    loop {
        let c = tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            c = s.next() => c,
        };
        match c {
            Some(c) => {
                let c = c?;
                len += c.len() as u64;
                chunks.push(c);
            }
            None => break,
        }
    }
    if len != end - start {
        return Err(Error::Store {
            op: "get",
            key: key.to_string(),
            detail: format!("bytes {start}-{} came back as {len} bytes", end - 1),
            reason: "ShortRead",
        });
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    /// Ranged GETs of `want` whose first `fail` answers break off after
    /// 1000 bytes.
    fn flaky(want: Arc<Vec<u8>>, fail: u32) -> GetRange {
        let left = Arc::new(std::sync::atomic::AtomicU32::new(fail));
        Arc::new(move |start, end| {
            let body = Bytes::copy_from_slice(&want[start as usize..end as usize]);
            let broken = left
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok();
            let items = if broken {
                vec![
                    Ok(body.slice(..1000)),
                    Err(Error::Store {
                        op: "get",
                        key: "obj".into(),
                        detail: "connection reset".into(),
                        reason: "S3Unreachable",
                    }),
                ]
            } else {
                vec![Ok(body)]
            };
            Box::pin(async move { Ok(futures::stream::iter(items).boxed()) })
        })
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    async fn read_all(s: ByteStream) -> Result<Vec<u8>> {
        Ok(s.try_collect::<Vec<Bytes>>().await?.concat())
    }

    #[tokio::test]
    async fn ranges_come_back_in_order_whatever_finishes_first() {
        let dir = tempfile::tempdir().unwrap();
        let want = data(10 * 1024 * 1024 + 123);
        std::fs::write(dir.path().join("obj"), &want).unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().into()));
        for (range, window) in [(1 << 20, 3), (777_777, 8), (64 << 20, 4)] {
            let s = ranged_stream(
                of_store(store.clone(), "obj".into()),
                "obj".into(),
                want.len() as u64,
                range,
                window,
                CancellationToken::new(),
            );
            assert!(read_all(s).await.unwrap() == want, "range {range}");
        }
    }

    #[tokio::test]
    async fn a_broken_range_is_fetched_again_and_a_lasting_fault_fails() {
        let want = Arc::new(data(3 * 1024 * 1024));
        let read = |fail| {
            read_all(ranged_stream(
                flaky(want.clone(), fail),
                "obj".into(),
                want.len() as u64,
                1 << 20,
                2,
                CancellationToken::new(),
            ))
        };
        assert!(read(2).await.unwrap() == *want);
        let e = read(100).await.unwrap_err();
        assert!(e.to_string().contains("connection reset"), "{e}");
    }
}
