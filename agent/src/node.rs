//! What a task needs to know about the node it runs on and where it writes.

use crate::qdrant::Qdrant;
use crate::store::ObjectStore;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct Node {
    pub qdrant: Qdrant,
    /// Path segment naming this node in object keys (the pod name).
    pub name: String,
    /// The snapshots volume as the agent sees it (FILE mode and downloads).
    pub snapshots_dir: Option<PathBuf>,
    /// The same volume as Qdrant sees it, when mounted elsewhere.
    pub qdrant_snapshots_dir: Option<PathBuf>,
}

impl Node {
    /// Path of `rel` inside the snapshots dir as Qdrant sees it.
    pub fn qdrant_path(&self, rel: &Path) -> Option<PathBuf> {
        self.qdrant_snapshots_dir
            .as_ref()
            .or(self.snapshots_dir.as_ref())
            .map(|d| d.join(rel))
    }
}

#[derive(Clone)]
pub struct Target {
    pub store: Arc<dyn ObjectStore>,
    /// Key prefix under which `<backup-name>/` lives.
    pub prefix: String,
}

/// Bytes free for an unprivileged writer on the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// The host name, the default node name (a pod's name in Kubernetes).
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| crate::keys::validate_segment("node", h).is_ok())
        .unwrap_or_else(|| "node".to_string())
}
