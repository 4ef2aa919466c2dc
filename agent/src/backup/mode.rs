//! Stream or file: what `auto` picks for a shard from the snapshots
//! volume's free space, and whether that volume is usable.

use super::*;

/// Where the snapshots directory is, said wherever a mistake about it is.
pub(super) const SNAPSHOTS_HINT: &str = "it must be the directory Qdrant writes snapshots to (storage.snapshots_path in Qdrant's config: /qdrant/snapshots in Qdrant's image, ./snapshots beside a Qdrant started by hand), as this process sees it; --mode stream needs none";

/// Why the snapshots directory cannot be used, if it cannot.
pub(super) fn snapshots_dir_unusable(dir: &std::path::Path) -> Option<String> {
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
