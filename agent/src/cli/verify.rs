//! `qdrant-agent verify`: re-reads a backup from its store and checks every
//! object against the manifest, without Qdrant.

use super::{S3Args, human, target};
use crate::{Error, Result, defaults};
use clap::Args;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub s3: S3Args,
    /// s3://BUCKET/PREFIX or file:///DIR
    #[arg(long)]
    pub from: String,
    /// The backup to check, as `list` shows it.
    #[arg(long)]
    pub name: String,
    /// Objects read at once.
    #[arg(long, default_value_t = defaults::RESTORE_CONCURRENCY)]
    pub concurrency: usize,
}

pub async fn run(a: VerifyArgs) -> Result<()> {
    let (target, _) = target(&a.from, &a.s3, &Default::default()).await?;
    let cancel = super::progress::cancel_on_ctrl_c();
    let (m, checked, missing) = match crate::verify::backup(
        &target.store,
        &target.prefix,
        &a.name,
        a.concurrency,
        &cancel,
    )
    .await
    {
        Err(Error::ManifestMissing(_))
            if let Some(e) = super::not_found(&target, &a.from, &a.name).await =>
        {
            return Err(e);
        }
        r => r?,
    };
    println!("OBJECT\tSIZE\tRESULT");
    for c in &checked {
        let result = c.problem.as_deref().unwrap_or("ok");
        println!("{}\t{}\t{result}", c.key, human(c.size));
    }
    for m in &missing {
        println!("-\t-\tincomplete: {m}");
    }
    let bad = checked.iter().filter(|c| c.problem.is_some()).count();
    if bad > 0 {
        return Err(Error::ChecksumMismatch {
            key: format!("{bad} of {} objects of backup {}", checked.len(), a.name),
            expected: "the manifest's size and sha256".into(),
            actual: "other bytes or none (see above)".into(),
        });
    }
    if !missing.is_empty() {
        return Err(Error::Incomplete(format!(
            "backup {} lacks shards: {}",
            a.name,
            missing.join("; ")
        )));
    }
    println!(
        "backup {} verified: {}, {}, every one matches its manifest",
        m.backup_name,
        super::count(checked.len(), "object"),
        human(m.total_bytes())
    );
    Ok(())
}
