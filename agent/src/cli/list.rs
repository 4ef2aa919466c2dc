//! `qdrant-agent list`: the complete backups under a location.

use super::{S3Args, human, target};
use crate::{Result, manifest};
use clap::{Args, ValueEnum};

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub s3: S3Args,
    /// s3://BUCKET/PREFIX or file:///DIR
    #[arg(long)]
    pub from: String,
    /// text (a table for people) or json (one array, for scripts).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

pub async fn run(a: ListArgs) -> Result<()> {
    let (target, _) = target(&a.from, &a.s3, &Default::default()).await?;
    let names = manifest::list_complete(&*target.store, &target.prefix).await?;
    let mut rows = Vec::new();
    for name in names {
        let row = match manifest::read(&*target.store, &target.prefix, &name).await {
            Ok(m) => serde_json::json!({
                "name": name,
                "completedAt": m.completed_at,
                "qdrantVersion": m.qdrant_version,
                "collections": m.collections.iter().map(|c| &c.name).collect::<Vec<_>>(),
                "objects": m.objects().count(),
                "sizeBytes": m.total_bytes(),
            }),
            Err(e) => serde_json::json!({"name": name, "error": e.to_string()}),
        };
        rows.push(row);
    }
    if a.output == Output::Json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if rows.is_empty() {
        // Backups one or more levels down: a prefix was left out.
        let below = manifest::prefixes_below(&*target.store, &target.prefix, 10).await?;
        if below.is_empty() {
            println!("no backups under {}", a.from);
        } else {
            let from = a.from.trim_end_matches('/');
            let base = target.prefix.trim_end_matches('/');
            println!("no backups directly under {}; backups are under:", a.from);
            for (p, n) in below {
                let rest = p.strip_prefix(base).unwrap_or(&p).trim_start_matches('/');
                println!("  {from}/{rest}\t({})", super::count(n, "backup"));
            }
        }
        return Ok(());
    }
    println!("NAME\tCOMPLETED\tQDRANT\tCOLLECTIONS\tSIZE");
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        match r.get("error") {
            Some(e) => println!(
                "{}\tunreadable manifest: {}",
                s("name"),
                e.as_str().unwrap_or_default()
            ),
            None => println!(
                "{}\t{}\t{}\t{}\t{}",
                s("name"),
                s("completedAt"),
                s("qdrantVersion"),
                r["collections"].as_array().map_or(0, Vec::len),
                human(r["sizeBytes"].as_u64().unwrap_or(0))
            ),
        }
    }
    Ok(())
}
