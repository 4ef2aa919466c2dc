//! Command-line definitions for the `qdrant-agent` binary.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
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
}

#[derive(Args, Debug, Clone)]
pub struct QdrantArgs {
    /// Qdrant's REST URL, http:// or https://.
    #[arg(long, env = "QDRANT_URL", default_value = "http://localhost:6333")]
    pub qdrant_url: String,
    /// File holding Qdrant's API key (or set QDRANT_API_KEY).
    #[arg(long)]
    pub qdrant_api_key_file: Option<PathBuf>,
    /// Qdrant's snapshots directory as this process sees it.
    #[arg(long, env = "QDRANT_SNAPSHOTS_DIR")]
    pub snapshots_dir: Option<PathBuf>,
    /// The same directory as Qdrant sees it, if mounted at another path.
    #[arg(long)]
    pub qdrant_snapshots_dir: Option<PathBuf>,
    /// This node's name in object keys (default: the host name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
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
    /// Server-side encryption: AES256 or aws:kms.
    #[arg(long)]
    pub s3_sse: Option<String>,
    /// KMS key for --s3-sse aws:kms (default: the bucket's AWS-managed key).
    #[arg(long)]
    pub s3_sse_kms_key_id: Option<String>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address of the gRPC API [default: 0.0.0.0:50051, or 127.0.0.1:50051
    /// with --insecure].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub qdrant: QdrantArgs,
    #[command(flatten)]
    pub s3: S3Args,
    /// Require `authorization: Bearer <token>`, the token read from this file.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Server certificate (PEM) for TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to: mutual TLS.
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve plaintext without authentication (local diagnostics only).
    #[arg(long)]
    pub insecure: bool,
    /// Accept `file://` storage targets in tasks. Off by default: a caller
    /// could otherwise write to or delete from the node's own disks.
    #[arg(long)]
    pub allow_local_targets: bool,
    /// Also serve gRPC health alone, in plaintext, on this address (for
    /// kubelet probes, which cannot present TLS).
    #[arg(long)]
    pub health_listen: Option<SocketAddr>,
}

impl ServeArgs {
    /// Where to listen: as given, else every interface, but only loopback
    /// when serving without authentication.
    pub fn listen_addr(&self) -> SocketAddr {
        let host = if self.insecure {
            std::net::Ipv4Addr::LOCALHOST
        } else {
            std::net::Ipv4Addr::UNSPECIFIED
        };
        self.listen.unwrap_or(SocketAddr::from((host, 50051)))
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeArg {
    Stream,
    File,
    Auto,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub qdrant: QdrantArgs,
    #[command(flatten)]
    pub s3: S3Args,
    /// s3://BUCKET/PREFIX or file:///DIR
    #[arg(long)]
    pub to: String,
    /// Backup name (default: backup-<UTC timestamp>).
    #[arg(long)]
    pub name: Option<String>,
    /// Collection to back up, optionally with shards: NAME or NAME:0,2. Repeatable; default all.
    #[arg(long = "collection")]
    pub collections: Vec<String>,
    #[arg(long, value_enum, default_value_t = ModeArg::Stream)]
    pub mode: ModeArg,
    /// Parts in flight per shard upload.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// First part size (8MiB, 16MiB, or bytes); grows to stay under 10,000 parts.
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub part_size: u64,
    /// Shards streamed at once.
    #[arg(long, default_value_t = 2)]
    pub shard_concurrency: usize,
    /// Seconds without progress (no data from Qdrant, or no part finished
    /// uploading) before the backup fails. Qdrant itself cuts a snapshot
    /// stream whose reader stalls for 300 s, so keep this below that.
    #[arg(long, default_value_t = 240)]
    pub stall_timeout: u64,
}

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
    /// Do not read every object once to check sha256 before touching Qdrant.
    #[arg(long)]
    pub skip_verify: bool,
    /// Seconds to wait for each collection to turn green.
    #[arg(long, default_value_t = 600)]
    pub green_timeout: u64,
    /// Objects uploaded at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub s3: S3Args,
    /// s3://BUCKET/PREFIX or file:///DIR
    #[arg(long)]
    pub from: String,
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
        out.insert(old, new);
    }
    Ok(out)
}

/// Bytes as a person reads them: 512 B, 47.9 MiB, 1.20 GiB.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        n if n >= 1 << 30 => format!("{:.2} GiB", b / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", b / 1024.0),
        n => format!("{n} B"),
    }
}

/// A size in bytes, or with a unit: 8MiB, 16 MiB, 512KiB, 1GiB (also MB, KB, GB as binary).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 8MiB or 8388608)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?} (use KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

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
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("16 MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("8388608"), Ok(8 << 20));
        assert!(parse_size("8 parsecs").unwrap_err().contains("unit"));
        assert_eq!(human(50331648), "48.0 MiB");
        assert_eq!(human(3 << 30), "3.00 GiB");
        assert_eq!(human(900), "900 B");
        assert!(parse_rename("a=").is_err());
        assert!(parse_rename("ab").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
