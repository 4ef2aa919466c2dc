//! The agent's defaults, in one place: the command line and the gRPC API
//! start from the same numbers.

use std::time::Duration;

/// First multipart part size; it doubles every 900 parts (see `keys`).
pub const PART_SIZE: u64 = 8 << 20;
/// Parts in flight per shard upload.
pub const CONCURRENCY: usize = 4;
/// Shards streamed at once in one backup.
pub const SHARD_CONCURRENCY: usize = 2;
/// Seconds without progress before a transfer fails. Qdrant cuts a
/// snapshot stream whose reader stalls for 300 s: stay below that.
pub const STALL_TIMEOUT_SECS: u64 = 240;
/// Seconds a restore waits for each collection to settle.
pub const GREEN_TIMEOUT_SECS: u64 = 600;
/// Objects uploaded to Qdrant at once in one restore.
pub const RESTORE_CONCURRENCY: usize = 2;

pub const STALL_TIMEOUT: Duration = Duration::from_secs(STALL_TIMEOUT_SECS);
pub const GREEN_TIMEOUT: Duration = Duration::from_secs(GREEN_TIMEOUT_SECS);
