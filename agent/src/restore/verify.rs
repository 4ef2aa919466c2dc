//! Checking every object of a backup against its recorded sha256 before
//! anything is touched (`verify_first`).

use super::*;

/// Reads every object once and compares size and sha256 with the manifest.
pub(super) async fn verify(
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

pub(super) async fn hash_stream(
    mut s: ByteStream,
    cancel: &CancellationToken,
) -> Result<(u64, String)> {
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
