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
    /// The most the snapshots directory may hold (a Kubernetes emptyDir's
    /// `sizeLimit`: past it the kubelet evicts the pod), whatever the
    /// filesystem has free.
    pub snapshots_limit: Option<u64>,
    /// Why the file modes are off although a snapshots directory was
    /// given: it is not where Qdrant writes (`qdrant_config::snapshots_elsewhere`).
    pub snapshots_elsewhere: Option<String>,
    /// Qdrant's storage directory, when the agent sees it (for `disk`).
    pub storage_dir: Option<PathBuf>,
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

/// Where the agent notes the collection snapshots it has Qdrant write for
/// a FILE-mode backup, until they are deleted: `<snapshots>/.qdrant-agent/`.
const JOURNAL: &str = ".qdrant-agent";

impl Node {
    /// Notes that `<collection>/<name>` in the snapshots dir is this agent's
    /// (a copy of a collection being uploaded), so a killed agent's next
    /// start deletes it.
    pub fn note_snapshot(&self, collection: &str, name: &str) {
        if let Some(d) = &self.snapshots_dir {
            let j = d.join(JOURNAL);
            // Never the snapshots directory itself: a wrong path is not made.
            let _ = std::fs::create_dir(&j);
            let _ = std::fs::write(j.join(format!("{collection}__{name}")), b"");
        }
    }

    /// The snapshot is gone: forget it.
    pub fn forget_snapshot(&self, collection: &str, name: &str) {
        if let Some(d) = &self.snapshots_dir {
            let _ = std::fs::remove_file(d.join(JOURNAL).join(format!("{collection}__{name}")));
        }
    }

    /// Deletes what a killed agent left on the snapshots volume: restore
    /// downloads (`<collection>/restore-<16 hex>.snapshot`) and the
    /// collection and shard snapshots its file-mode backups noted. Anything else there
    /// (snapshots a user took) is left alone. Returns the paths removed.
    pub fn sweep_leftovers(&self) -> Vec<PathBuf> {
        let Some(dir) = &self.snapshots_dir else {
            return vec![];
        };
        let mut removed = Vec::new();
        let mut remove = |p: PathBuf| {
            if std::fs::remove_file(&p).is_ok() {
                removed.push(p);
            }
        };
        for c in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let is_restore = |n: &str| {
                n.strip_prefix("restore-")
                    .and_then(|r| r.strip_suffix(".snapshot"))
                    .is_some_and(|h| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()))
            };
            if c.file_name() == JOURNAL || !c.path().is_dir() {
                continue;
            }
            for f in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                if f.file_name().to_str().is_some_and(is_restore) {
                    remove(f.path());
                }
            }
        }
        for entry in std::fs::read_dir(dir.join(JOURNAL))
            .into_iter()
            .flatten()
            .flatten()
        {
            let noted = entry.file_name().to_string_lossy().into_owned();
            if let Some((c, name)) = noted.split_once("__")
                && crate::keys::validate_segment("collection", c).is_ok()
                && crate::keys::validate_segment("snapshot", name).is_ok()
            {
                // A collection snapshot, or a shard's (`<c>-shard-<id>-...`).
                let mut at = vec![dir.join(c)];
                if let Some(id) = name
                    .strip_prefix(&format!("{c}-shard-"))
                    .and_then(|r| r.split('-').next())
                    .and_then(|id| id.parse::<u32>().ok())
                {
                    at.push(dir.join(c).join("shards").join(id.to_string()));
                }
                for d in at {
                    remove(d.join(name));
                    remove(d.join(format!("{name}.checksum")));
                }
            }
            let _ = std::fs::remove_file(entry.path());
        }
        removed
    }
}

#[derive(Clone)]
pub struct Target {
    pub store: Arc<dyn ObjectStore>,
    /// Key prefix under which `<backup-name>/` lives.
    pub prefix: String,
}

impl Node {
    /// Bytes a snapshot may still take in the snapshots directory: the
    /// filesystem's free space, and no more than its size limit leaves.
    /// Blocking (it reads the directory): call from `spawn_blocking`.
    pub fn snapshots_free(&self) -> Option<u64> {
        let dir = self.snapshots_dir.as_deref()?;
        let free = free_space(dir)?;
        Some(match self.snapshots_limit {
            Some(limit) => free.min(limit.saturating_sub(used_space(dir))),
            None => free,
        })
    }
}

/// Bytes of the files below `dir` (links not followed).
pub fn used_space(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => used_space(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// The disk under Qdrant's storage directory `dir`: (free, total, bytes
/// the collections take). `None` when it cannot be read.
pub fn disk(dir: &Path) -> Option<(u64, u64, u64)> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some((
        s.f_bavail.saturating_mul(s.f_frsize),
        s.f_blocks.saturating_mul(s.f_frsize),
        allocated_space(&dir.join("collections")),
    ))
}

/// Bytes the files below `dir` take on disk (links not followed): sparse
/// and preallocated files count for their allocated blocks.
pub fn allocated_space(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => allocated_space(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.blocks() * 512).unwrap_or(0),
            _ => 0,
        })
        .sum()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_sweeps_the_agents_own_leftovers_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node {
            qdrant: Qdrant::new("http://127.0.0.1:1", None).unwrap(),
            name: "pod-0".into(),
            snapshots_dir: Some(dir.path().into()),
            qdrant_snapshots_dir: None,
            snapshots_limit: None,
            snapshots_elsewhere: None,
            storage_dir: None,
        };
        let docs = dir.path().join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        for f in [
            "restore-0123456789abcdef.snapshot", // a killed restore's download
            "docs-111.snapshot",                 // a killed FILE-mode backup's copy
            "docs-111.snapshot.checksum",
            "docs-222.snapshot", // a user's own snapshot
            "restore-notes.snapshot",
        ] {
            std::fs::write(docs.join(f), b"x").unwrap();
        }
        // A killed shard-file backup's copy, and a user's shard snapshot.
        let shard = docs.join("shards/2");
        std::fs::create_dir_all(&shard).unwrap();
        for f in [
            "docs-shard-2-2026-11-30-13-48-44.snapshot",
            "docs-shard-2-mine.snapshot",
        ] {
            std::fs::write(shard.join(f), b"x").unwrap();
        }
        node.note_snapshot("docs", "docs-shard-2-2026-11-30-13-48-44.snapshot");
        node.note_snapshot("docs", "docs-111.snapshot");
        node.note_snapshot("docs", "docs-333.snapshot");
        node.forget_snapshot("docs", "docs-333.snapshot");
        let mut removed: Vec<String> = node
            .sweep_leftovers()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        assert_eq!(
            removed,
            [
                "docs-111.snapshot",
                "docs-111.snapshot.checksum",
                "docs-shard-2-2026-11-30-13-48-44.snapshot",
                "restore-0123456789abcdef.snapshot"
            ]
        );
        assert!(shard.join("docs-shard-2-mine.snapshot").exists());
        assert!(docs.join("docs-222.snapshot").exists());
        assert!(docs.join("restore-notes.snapshot").exists());
        assert!(node.sweep_leftovers().is_empty(), "the journal is cleared");
    }

    #[test]
    fn the_snapshots_size_limit_caps_the_room_auto_mode_sees() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = Node {
            qdrant: Qdrant::new("http://127.0.0.1:1", None).unwrap(),
            name: "pod-0".into(),
            snapshots_dir: Some(dir.path().into()),
            qdrant_snapshots_dir: None,
            snapshots_limit: None,
            snapshots_elsewhere: None,
            storage_dir: None,
        };
        std::fs::create_dir_all(dir.path().join("docs")).unwrap();
        std::fs::write(dir.path().join("docs/a.snapshot"), vec![0u8; 3 << 20]).unwrap();
        let disk = node.snapshots_free().unwrap();
        assert!(disk > 16 << 20, "the disk has room: {disk}");
        // An emptyDir of 4 MiB with 3 MiB in it: 1 MiB left, whatever the disk.
        node.snapshots_limit = Some(4 << 20);
        assert_eq!(node.snapshots_free(), Some(1 << 20));
        node.snapshots_limit = Some(2 << 20);
        assert_eq!(node.snapshots_free(), Some(0));
        // Auto mode then streams a collection it would otherwise write.
        let info = serde_json::json!({"points_count": 1000, "config": {"params": {"vectors": {"size": 128}}}});
        assert_eq!(
            crate::backup::auto_mode(Some(disk), &info),
            crate::backup::Mode::ShardFile
        );
        assert_eq!(
            crate::backup::auto_mode(node.snapshots_free(), &info),
            crate::backup::Mode::Stream
        );
    }
}
