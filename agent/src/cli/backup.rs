//! `qdrant-agent backup`: one node's collections to a store.

use super::progress::run_task;
use super::{QdrantArgs, S3Args, SseArgs, human, node, parse_selections, parse_size, target};
use crate::backup::{self, BackupRequest, Mode};
use crate::upload::UploadOptions;
use crate::{Result, defaults};
use clap::{Args, ValueEnum};
use qdrant_agent_proto::v1::TaskKind;
use std::time::Duration;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeArg {
    /// Each shard's live snapshot streamed to S3; needs no disk.
    Stream,
    /// Each shard's snapshot file, written by Qdrant, uploaded, deleted.
    ShardFile,
    /// One collection snapshot file per collection (restores only into the
    /// same shard count).
    File,
    /// shard-file where the snapshots volume has room, stream otherwise.
    Auto,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub qdrant: QdrantArgs,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub sse: SseArgs,
    /// s3://BUCKET/PREFIX or file:///DIR
    #[arg(long)]
    pub to: String,
    /// Backup name (default: backup-YYYYMMDD-HHMMSS-XXXX, the UTC time and
    /// four random hex digits).
    #[arg(long)]
    pub name: Option<String>,
    /// Collection to back up, optionally with shards: NAME or NAME:0,2. Repeatable; default all.
    #[arg(long = "collection")]
    pub collections: Vec<String>,
    /// How each shard is read from Qdrant.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,
    /// Parts in flight per shard upload.
    #[arg(long, default_value_t = defaults::CONCURRENCY)]
    pub concurrency: usize,
    /// First part size (8MiB, 16MiB, or bytes); grows to stay under 10,000 parts.
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub part_size: u64,
    /// Shards streamed at once.
    #[arg(long, default_value_t = defaults::SHARD_CONCURRENCY)]
    pub shard_concurrency: usize,
    /// Seconds without progress (no data from Qdrant, or no part finished
    /// uploading) before the backup fails. Qdrant itself cuts a snapshot
    /// stream whose reader stalls for 300 s, so keep this below that.
    #[arg(long, default_value_t = defaults::STALL_TIMEOUT_SECS)]
    pub stall_timeout: u64,
}

pub async fn run(a: BackupArgs) -> Result<()> {
    let node = node(&a.qdrant)?;
    let (target, _) = target(&a.to, &a.s3, &a.sse).await?;
    let name = a.name.unwrap_or_else(default_backup_name);
    let collections = parse_selections(&a.collections)?;
    let req = BackupRequest {
        backup_name: name.clone(),
        collections,
        mode: match a.mode {
            ModeArg::Stream => Mode::Stream,
            ModeArg::File => Mode::File,
            ModeArg::ShardFile => Mode::ShardFile,
            ModeArg::Auto => Mode::Auto,
        },
        upload: UploadOptions {
            part_size: a.part_size,
            concurrency: a.concurrency,
            budget: crate::upload::Budget::installed(),
            slot_timeout: Duration::from_secs(a.stall_timeout),
            read_timeout: Duration::from_secs(a.stall_timeout),
        },
        shard_concurrency: a.shard_concurrency,
        write_manifest: true,
        // Each run its own owner: two runs that pick the same name (two
        // nodes from cron in the same second) cannot write over each other.
        owner: format!("cli-{}-{:08x}", node.name, rand::random::<u32>()),
    };
    let (m, task) = run_task(TaskKind::Backup, &name, async |p, cancel| {
        backup::run(&node, &target, &req, p, cancel).await
    })
    .await?;
    println!(
        "backup {} complete: {}, {}, manifest {}",
        m.backup_name,
        super::count(m.objects().count(), "object"),
        human(m.total_bytes()),
        task.manifest_key
    );
    println!("{}", modes_taken(&m));
    Ok(())
}

/// Which mode read each collection (auto chooses per collection):
/// "mode: shard-file (docs), stream (big)".
fn modes_taken(m: &crate::manifest::Manifest) -> String {
    let mut by: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for c in &m.collections {
        let mut seen: Vec<&str> = c
            .objects
            .iter()
            .map(|o| o.taken_with.as_deref().unwrap_or(o.mode.as_str()))
            .collect();
        seen.dedup();
        for w in seen {
            by.entry(w).or_default().push(&c.name);
        }
    }
    let parts: Vec<String> = by
        .iter()
        .map(|(w, cs)| format!("{w} ({})", cs.join(", ")))
        .collect();
    format!("mode: {}", parts.join(", "))
}

/// `backup-<UTC time>-<4 hex>`: sortable by time, and two runs in the same
/// second still get different names.
fn default_backup_name() -> String {
    format!(
        "{}-{:04x}",
        jiff::Timestamp::now().strftime("backup-%Y%m%d-%H%M%S"),
        rand::random::<u16>()
    )
}
