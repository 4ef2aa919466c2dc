//! `qdrant-agent delete`: removes a backup from its store (manifest first,
//! so it stops counting as complete, then its objects and open uploads).
//! This is how objects left behind by a deleted cluster are cleaned up.

use super::{S3Args, target};
use crate::{Error, Result, keys, manifest};
use clap::Args;

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub s3: S3Args,
    /// s3://BUCKET/PREFIX or file:///DIR
    #[arg(long)]
    pub from: String,
    /// The backup to delete (complete or not), as `list` or a status shows it.
    #[arg(long)]
    pub name: String,
}

pub async fn run(a: DeleteArgs) -> Result<()> {
    keys::validate_segment("backup", &a.name)?;
    let (target, _) = target(&a.from, &a.s3, &Default::default()).await?;
    let root = format!("{}/", keys::backup_root(&target.prefix, &a.name));
    if target.store.list(&root).await?.is_empty() {
        return Err(super::not_found(&target, &a.from, &a.name)
            .await
            .unwrap_or_else(|| {
                Error::Invalid(format!(
                    "there is no backup {} under {} (nothing to delete)",
                    a.name, a.from
                ))
            }));
    }
    let n = manifest::delete_backup(&*target.store, &target.prefix, &a.name, "").await?;
    println!(
        "deleted backup {} under {}: {}",
        a.name,
        a.from,
        super::count(n as usize, "object")
    );
    Ok(())
}
