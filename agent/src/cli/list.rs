//! `qdrant-agent list`: the complete backups under a location.

use super::{S3Args, human, target};
use crate::{Result, manifest};
use clap::Args;

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub s3: S3Args,
    /// s3://BUCKET/PREFIX or file:///DIR
    #[arg(long)]
    pub from: String,
}

pub async fn run(a: ListArgs) -> Result<()> {
    let (target, _) = target(&a.from, &a.s3).await?;
    let names = manifest::list_complete(&*target.store, &target.prefix).await?;
    if names.is_empty() {
        println!("no backups under {}", a.from);
        return Ok(());
    }
    println!("NAME\tCOMPLETED\tQDRANT\tCOLLECTIONS\tSIZE");
    for name in names {
        match manifest::read(&*target.store, &target.prefix, &name).await {
            Ok(m) => println!(
                "{name}\t{}\t{}\t{}\t{}",
                m.completed_at,
                m.qdrant_version,
                m.collections.len(),
                human(m.total_bytes())
            ),
            Err(e) => println!("{name}\tunreadable manifest: {e}"),
        }
    }
    Ok(())
}
