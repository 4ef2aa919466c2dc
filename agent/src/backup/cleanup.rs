//! The multipart uploads a killed agent left behind, aborted before its
//! node's next backup.

use super::*;

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
