//! The `qdrant-agent` command line: one file per command, the arguments
//! they share here, and their defaults from `crate::defaults`.

mod backup;
mod delete;
mod list;
mod progress;
mod restore;
mod serve;
mod verify;

pub use backup::{BackupArgs, ModeArg};
pub use delete::DeleteArgs;
pub use list::ListArgs;
pub use restore::RestoreArgs;
pub use serve::ServeArgs;
pub use verify::VerifyArgs;

use crate::node::{Node, Target, hostname};
use crate::qdrant::Qdrant;
use crate::store::{self, Location, S3Config};
use crate::{Error, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "qdrant-agent",
    version,
    about = "Streams Qdrant shard snapshots to and from S3 or a directory"
)]
pub struct Cli {
    /// Log format: text for people, json for log pipelines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "QDRANT_AGENT_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// The memory all uploads of this process may hold in part buffers at
    /// once (e.g. 256MiB); parts wait for it, so concurrency adapts. Keep it
    /// under the container's memory limit, with room for the rest.
    #[arg(long, global = true, default_value = "256MiB", value_parser = parse_size, env = "QDRANT_AGENT_MEMORY_BUDGET")]
    pub memory_budget: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the gRPC API (the sidecar mode).
    Serve(ServeArgs),
    /// Back up collections of one Qdrant node.
    Backup(BackupArgs),
    /// Restore a backup into one Qdrant node.
    Restore(RestoreArgs),
    /// List complete backups (those with a manifest).
    List(ListArgs),
    /// Check every object of a backup against its manifest, without Qdrant.
    Verify(VerifyArgs),
    /// Delete a backup, complete or not, from its store.
    Delete(DeleteArgs),
}

#[derive(Args, Debug, Clone)]
pub struct QdrantArgs {
    /// Qdrant's REST URL, http:// or https://.
    #[arg(long, env = "QDRANT_URL", default_value = "http://localhost:6333")]
    pub qdrant_url: String,
    /// File holding Qdrant's API key (or set QDRANT_API_KEY).
    #[arg(long)]
    pub qdrant_api_key_file: Option<PathBuf>,
    /// Qdrant's config folder as this process sees it (/qdrant/config in
    /// Qdrant's image, with the files Qdrant's pod mounts there): the API
    /// key and TLS setting are read from config.yaml, $RUN_MODE.yaml,
    /// local.yaml, --qdrant-config and QDRANT__* variables, in Qdrant's own
    /// order. --qdrant-api-key-file and QDRANT_API_KEY come first.
    #[arg(long, env = "QDRANT_CONFIG_DIR")]
    pub qdrant_config_dir: Option<PathBuf>,
    /// Qdrant's RUN_MODE, which names the config/$RUN_MODE.yaml it reads
    /// (Qdrant's image sets production).
    #[arg(long, env = "QDRANT_RUN_MODE", default_value = "production")]
    pub qdrant_run_mode: String,
    /// The config file Qdrant was started with (its --config-path), read
    /// after the config folder's files.
    #[arg(long, env = "QDRANT_CONFIG_FILE")]
    pub qdrant_config: Option<PathBuf>,
    /// Qdrant's snapshots directory as this process sees it.
    #[arg(long, env = "QDRANT_SNAPSHOTS_DIR")]
    pub snapshots_dir: Option<PathBuf>,
    /// The same directory as Qdrant sees it, if mounted at another path.
    #[arg(long)]
    pub qdrant_snapshots_dir: Option<PathBuf>,
    /// The most the snapshots directory may hold (e.g. its emptyDir's
    /// sizeLimit, 10Gi): auto mode counts only what stays under it.
    #[arg(long, value_parser = parse_size, env = "QDRANT_SNAPSHOTS_SIZE_LIMIT")]
    pub snapshots_size_limit: Option<u64>,
    /// This node's name in object keys (default: the host name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Qdrant's storage directory as this process sees it (read-only is
    /// enough): lets a scale-in check the disk before shards move.
    #[arg(long, env = "QDRANT_STORAGE_DIR")]
    pub storage_dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct S3Args {
    /// Custom S3 endpoint (or AWS_ENDPOINT_URL). Path-style unless --s3-virtual-hosted.
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// Region (or AWS_REGION); us-east-1 when none is set anywhere.
    #[arg(long)]
    pub s3_region: Option<String>,
    /// Virtual-hosted-style addressing (bucket.endpoint) with --s3-endpoint.
    #[arg(long)]
    pub s3_virtual_hosted: bool,
}

/// Encryption of what is written: only the commands that write take it.
#[derive(Args, Debug, Clone, Default)]
pub struct SseArgs {
    /// Server-side encryption: AES256 or aws:kms.
    #[arg(long)]
    pub s3_sse: Option<String>,
    /// KMS key for --s3-sse aws:kms (default: the bucket's AWS-managed key).
    #[arg(long)]
    pub s3_sse_kms_key_id: Option<String>,
}

/// Runs one command.
pub async fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Serve(a) => serve::run(a).await,
        Command::Backup(a) => backup::run(a).await,
        Command::Restore(a) => restore::run(a).await,
        Command::List(a) => list::run(a).await,
        Command::Verify(a) => verify::run(a).await,
        Command::Delete(a) => delete::run(a).await,
    }
}

pub(crate) fn node(a: &QdrantArgs) -> Result<Node> {
    let config = qdrant_config(a)?;
    let key = match &a.qdrant_api_key_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| {
                    Error::Invalid(format!(
                        "cannot read the Qdrant API key file {} (--qdrant-api-key-file): {e}",
                        p.display()
                    ))
                })?
                .trim()
                .to_string(),
        ),
        None => match std::env::var("QDRANT_API_KEY")
            .ok()
            .filter(|k| !k.is_empty())
        {
            Some(k) => Some(k),
            None => config.api_key,
        },
    };
    let name = a.node_name.clone().unwrap_or_else(hostname);
    crate::keys::validate_segment("node", &name)?;
    // A snapshots directory that is not where Qdrant writes would make
    // every file-mode backup fail after Qdrant wrote its snapshot: the
    // file modes are off from the start, and auto streams.
    let elsewhere = crate::qdrant_config::snapshots_elsewhere(
        config.snapshots_path.as_deref(),
        a.qdrant_config_dir.as_deref(),
        a.qdrant_snapshots_dir
            .as_ref()
            .or(a.snapshots_dir.as_ref())
            .map(PathBuf::as_path),
    );
    let mut snapshots_dir = a.snapshots_dir.clone();
    if let Some(why) = &elsewhere {
        tracing::warn!("{why}: file and shard-file modes are off, auto mode streams");
        snapshots_dir = None;
    }
    Ok(Node {
        qdrant: Qdrant::new(&a.qdrant_url, key)?,
        name,
        snapshots_dir,
        qdrant_snapshots_dir: a.qdrant_snapshots_dir.clone(),
        snapshots_limit: a.snapshots_size_limit,
        snapshots_elsewhere: elsewhere,
        storage_dir: a.storage_dir.clone(),
    })
}

/// Qdrant's own configuration as `a` locates it (nothing when neither a
/// config folder nor a file is given, but `QDRANT__*` variables).
fn qdrant_config(a: &QdrantArgs) -> Result<crate::qdrant_config::QdrantConfig> {
    let sources = crate::qdrant_config::Sources {
        dir: a.qdrant_config_dir.clone(),
        run_mode: a.qdrant_run_mode.clone(),
        config_path: a.qdrant_config.clone(),
    };
    let c = crate::qdrant_config::load(&sources, std::env::vars())?;
    if c.enable_tls == Some(true) && a.qdrant_url.starts_with("http://") {
        return Err(Error::Invalid(format!(
            "Qdrant serves HTTPS (service.enable_tls in {}), but --qdrant-url is {}: give its https:// URL",
            describe(&c.files),
            a.qdrant_url
        )));
    }
    Ok(c)
}

fn describe(files: &[PathBuf]) -> String {
    if files.is_empty() {
        "QDRANT__SERVICE__ENABLE_TLS".into()
    } else {
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
            + " or QDRANT__SERVICE__ENABLE_TLS"
    }
}

pub(crate) fn s3_config(a: &S3Args, sse: &SseArgs) -> S3Config {
    S3Config {
        endpoint: a.s3_endpoint.clone(),
        region: a.s3_region.clone(),
        static_credentials: None,
        sse: sse.s3_sse.clone(),
        sse_kms_key_id: sse.s3_sse_kms_key_id.clone(),
        virtual_hosted_style: a.s3_virtual_hosted,
    }
}

/// The store and prefix of `url`; `sse` only for commands that write.
pub(crate) async fn target(url: &str, s3: &S3Args, sse: &SseArgs) -> Result<(Target, Location)> {
    let loc = Location::parse(url)?;
    let store = store::open(&loc, &s3_config(s3, sse)).await?;
    Ok((
        Target {
            store,
            prefix: loc.prefix().to_string(),
        },
        loc,
    ))
}

/// Every `--collection NAME[:SHARDS]`.
pub(crate) fn parse_selections(all: &[String]) -> Result<Vec<(String, Vec<u32>)>> {
    all.iter()
        .map(|c| parse_selection(c))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(Error::Invalid)
}

/// "docs" -> ("docs", []), "docs:0,2" -> ("docs", [0, 2]).
pub fn parse_selection(s: &str) -> Result<(String, Vec<u32>), String> {
    match s.rsplit_once(':') {
        Some((name, shards))
            if !shards.is_empty() && shards.split(',').all(|x| x.trim().parse::<u32>().is_ok()) =>
        {
            Ok((
                name.to_string(),
                shards
                    .split(',')
                    .map(|x| x.trim().parse().unwrap_or(0))
                    .collect(),
            ))
        }
        _ => Ok((s.to_string(), vec![])),
    }
}

/// Every `--rename OLD=NEW`; two collections may not get the same new
/// name (the second would fail half-way, after data was uploaded).
pub fn parse_renames(all: &[String]) -> Result<std::collections::HashMap<String, String>, String> {
    let mut out = std::collections::HashMap::new();
    let mut targets = std::collections::HashMap::new();
    for r in all {
        let (old, new) = parse_rename(r)?;
        if let Some(other) = targets.insert(new.clone(), old.clone())
            && other != old
        {
            return Err(format!(
                "--rename gives {other:?} and {old:?} the same new name {new:?}"
            ));
        }
        if let Some(first) = out.insert(old.clone(), new.clone())
            && first != new
        {
            return Err(format!(
                "--rename gives {old:?} two new names, {first:?} and {new:?}: give one"
            ));
        }
    }
    Ok(out)
}

/// A backup `name` that `from` does not hold: the backups it does hold,
/// the nearest names first, and the command that lists them. `None` when
/// something is stored under the name (an incomplete backup, which the
/// caller's own error describes).
pub(crate) async fn not_found(target: &Target, from: &str, name: &str) -> Option<Error> {
    let root = format!("{}/", crate::keys::backup_root(&target.prefix, name));
    if !target.store.list(&root).await.ok()?.is_empty() {
        return None;
    }
    let names = crate::manifest::list_complete(&*target.store, &target.prefix)
        .await
        .ok()?;
    let mut near: Vec<(usize, &String)> = names
        .iter()
        .map(|n| (edit_distance(n, name), n))
        .filter(|(d, n)| *d <= (n.len().max(name.len()) / 3).max(2))
        .collect();
    near.sort();
    let list = format!("qdrant-agent list --from {from}");
    let there = match (near.first(), names.len()) {
        (_, 0) => {
            format!("there are no backups there (`{list}` one level up shows where they are)")
        }
        (Some((_, n)), _) => format!(
            "did you mean {n}? `{list}` shows the {} there",
            count(names.len(), "backup")
        ),
        (None, _) => format!("`{list}` shows the {} there", count(names.len(), "backup")),
    };
    Some(Error::ManifestNotFound(format!(
        "no backup {name:?} under {from}; {there}"
    )))
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// "1 object", "3 objects".
pub fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

pub use crate::units::{human, parse_size};

pub fn parse_rename(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
        _ => Err(format!("--rename expects OLD=NEW, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_and_renames_parse() {
        assert_eq!(parse_selection("docs").unwrap(), ("docs".into(), vec![]));
        assert_eq!(
            parse_selection("docs:0,2").unwrap(),
            ("docs".into(), vec![0, 2])
        );
        assert_eq!(parse_selection("a:b").unwrap(), ("a:b".into(), vec![]));
        assert_eq!(parse_rename("a=b").unwrap(), ("a".into(), "b".into()));
        let two = |a: &str, b: &str| parse_renames(&[a.to_string(), b.to_string()]);
        assert!(two("a=x", "b=y").is_ok());
        let err = two("a=x", "b=x").unwrap_err();
        assert!(
            err.contains("same new name") && err.contains("\"x\""),
            "{err}"
        );
        assert!(parse_rename("a=").is_err());
        let e = two("docs=a1", "docs=a2").unwrap_err();
        assert!(e.contains("two new names"), "{e}");
        assert!(two("docs=a1", "docs=a1").is_ok());
        assert!(parse_rename("ab").is_err());
    }

    #[test]
    fn the_command_line_starts_from_the_shared_defaults() {
        let b = match Cli::parse_from(["qdrant-agent", "backup", "--to", "file:///x"]).command {
            Command::Backup(b) => b,
            _ => unreachable!(),
        };
        let o = crate::upload::UploadOptions::default();
        assert_eq!(
            (b.part_size, b.concurrency, b.stall_timeout),
            (o.part_size, o.concurrency, o.read_timeout.as_secs())
        );
        assert_eq!(o.slot_timeout, o.read_timeout);
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
