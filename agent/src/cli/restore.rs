//! `qdrant-agent restore`: a backup into one node.

use super::progress::run_task;
use super::{QdrantArgs, S3Args, human, node, not_found, parse_renames, parse_selections, target};
use crate::restore::{self, RestoreRequest};
use crate::{Error, Result, defaults};
use clap::Args;
use qdrant_agent_proto::v1::TaskKind;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub qdrant: QdrantArgs,
    #[command(flatten)]
    pub s3: S3Args,
    /// s3://BUCKET/PREFIX or file:///DIR
    #[arg(long)]
    pub from: String,
    /// The backup to restore, as `list` shows it.
    #[arg(long)]
    pub name: String,
    /// Collection to restore (NAME or NAME:0,2). Repeatable; default all.
    #[arg(long = "collection")]
    pub collections: Vec<String>,
    /// Restore collection OLD under the name NEW. Repeatable.
    #[arg(long = "rename")]
    pub rename: Vec<String>,
    /// Read every object once to check its sha256 before touching Qdrant.
    /// Without it each object is hashed while it streams into Qdrant, which
    /// checks that sha256 before it recovers anything.
    #[arg(long)]
    pub verify_first: bool,
    /// The default since one pass checks the same; kept for scripts.
    #[arg(long, hide = true)]
    pub skip_verify: bool,
    /// Seconds to wait for each collection to turn green.
    #[arg(long, default_value_t = defaults::GREEN_TIMEOUT_SECS)]
    pub green_timeout: u64,
    /// Objects uploaded at once.
    #[arg(long, default_value_t = defaults::RESTORE_CONCURRENCY)]
    pub concurrency: usize,
}

pub async fn run(a: RestoreArgs) -> Result<()> {
    let node = node(&a.qdrant)?;
    let (target, _) = target(&a.from, &a.s3, &Default::default()).await?;
    let collections = parse_selections(&a.collections)?;
    let rename = parse_renames(&a.rename).map_err(Error::Invalid)?;
    let req = RestoreRequest {
        backup_name: a.name.clone(),
        collections,
        rename,
        verify_first: a.verify_first && !a.skip_verify,
        create_collections: true,
        restore_aliases: true,
        green_timeout: Duration::from_secs(a.green_timeout),
        concurrency: a.concurrency,
        stage: Default::default(),
        owner: String::new(),
        from_cli: true,
    };
    let ((), t) = match run_task(TaskKind::Restore, &a.name, async |p, cancel| {
        restore::run(&node, &target, &req, p, cancel).await
    })
    .await
    {
        Err(Error::ManifestMissing(_))
            if let Some(e) = not_found(&target, &a.from, &a.name).await =>
        {
            return Err(e);
        }
        r => r?,
    };
    println!(
        "restore of {} complete: {}, {}",
        a.name,
        super::count(t.shards_done as usize, "object"),
        human(t.bytes_done)
    );
    Ok(())
}
