//! `qdrant-agent`: the sidecar's gRPC server and a standalone CLI.

use clap::Parser;
use qdrant_agent::backup::{self, BackupRequest, Mode};
use qdrant_agent::cli::{self, Cli, Command, LogFormat, ModeArg, QdrantArgs, S3Args};
use qdrant_agent::node::{Node, Target, hostname};
use qdrant_agent::progress::{Progress, now};
use qdrant_agent::qdrant::Qdrant;
use qdrant_agent::restore::{self, RestoreRequest};
use qdrant_agent::server::{AgentService, Auth, serve};
use qdrant_agent::store::{self, Location, S3Config};
use qdrant_agent::upload::UploadOptions;
use qdrant_agent::{Error, Result, manifest};
use qdrant_agent_proto::v1::{Task, TaskKind, TaskPhase};
use std::io::IsTerminal;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e} [{}]", e.reason());
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QDRANT_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

async fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Serve(a) => {
            let node = node(&a.qdrant)?;
            let token = match &a.token_file {
                Some(p) => Some(read_secret(p).await?),
                None => None,
            };
            let tls = match (&a.tls_cert, &a.tls_key) {
                (Some(c), Some(k)) => {
                    let id = tonic::transport::Identity::from_pem(read(c).await?, read(k).await?);
                    let mut t = tonic::transport::ServerTlsConfig::new().identity(id);
                    if let Some(ca) = &a.tls_client_ca {
                        t = t.client_ca_root(tonic::transport::Certificate::from_pem(
                            read(ca).await?,
                        ));
                    }
                    Some(t)
                }
                _ => None,
            };
            let auth = Auth {
                token,
                tls,
                client_certs: a.tls_client_ca.is_some(),
                insecure: a.insecure,
            };
            auth.check()?;
            let listen = a.listen_addr();
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| Error::io(listen.to_string(), e))?;
            let addr = listener
                .local_addr()
                .map_err(|e| Error::io("listener", e))?;
            tracing::info!(%addr, qdrant = %node.qdrant.url(), node = %node.name, token = auth.token.is_some(), tls = auth.tls.is_some(), "agent serving");
            let health_listener = match a.health_listen {
                Some(h) => Some(
                    tokio::net::TcpListener::bind(h)
                        .await
                        .map_err(|e| Error::io(h.to_string(), e))?,
                ),
                None => None,
            };
            let service = AgentService::new(node, s3_config(&a.s3))
                .allow_local_targets(a.allow_local_targets);
            serve(listener, health_listener, service, auth, shutdown_signal()).await
        }
        Command::Backup(a) => {
            let node = node(&a.qdrant)?;
            let (target, _) = target(&a.to, &a.s3).await?;
            let name = a.name.unwrap_or_else(default_backup_name);
            let collections = a
                .collections
                .iter()
                .map(|c| cli::parse_selection(c))
                .collect::<Result<Vec<_>, _>>()
                .map_err(Error::Invalid)?;
            let req = BackupRequest {
                backup_name: name.clone(),
                collections,
                mode: match a.mode {
                    ModeArg::Stream => Mode::Stream,
                    ModeArg::File => Mode::File,
                    ModeArg::Auto => Mode::Auto,
                },
                upload: UploadOptions {
                    part_size: a.part_size,
                    concurrency: a.concurrency,
                    slot_timeout: Duration::from_secs(a.stall_timeout),
                    read_timeout: Duration::from_secs(a.stall_timeout),
                },
                shard_concurrency: a.shard_concurrency,
                write_manifest: true,
            };
            let (m, task) = run_task(TaskKind::Backup, &name, async |p, cancel| {
                backup::run(&node, &target, &req, p, cancel).await
            })
            .await?;
            println!(
                "backup {} complete: {} objects, {}, manifest {}",
                m.backup_name,
                m.objects().count(),
                cli::human(m.total_bytes()),
                task.manifest_key
            );
            Ok(())
        }
        Command::Restore(a) => {
            let node = node(&a.qdrant)?;
            let (target, _) = target(&a.from, &a.s3).await?;
            let collections = a
                .collections
                .iter()
                .map(|c| cli::parse_selection(c))
                .collect::<Result<Vec<_>, _>>()
                .map_err(Error::Invalid)?;
            let rename = cli::parse_renames(&a.rename).map_err(Error::Invalid)?;
            let req = RestoreRequest {
                backup_name: a.name.clone(),
                collections,
                rename,
                verify_first: !a.skip_verify,
                create_collections: true,
                restore_aliases: true,
                green_timeout: Duration::from_secs(a.green_timeout),
                concurrency: a.concurrency,
                stage: Default::default(),
            };
            let ((), t) = run_task(TaskKind::Restore, &a.name, async |p, cancel| {
                restore::run(&node, &target, &req, p, cancel).await
            })
            .await?;
            println!(
                "restore of {} complete: {} objects, {}",
                a.name,
                t.shards_done,
                cli::human(t.bytes_done)
            );
            Ok(())
        }
        Command::List(a) => {
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
                        cli::human(m.total_bytes())
                    ),
                    Err(e) => println!("{name}\tunreadable manifest: {e}"),
                }
            }
            Ok(())
        }
    }
}

fn node(a: &QdrantArgs) -> Result<Node> {
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
        None => std::env::var("QDRANT_API_KEY")
            .ok()
            .filter(|k| !k.is_empty()),
    };
    let name = a.node_name.clone().unwrap_or_else(hostname);
    qdrant_agent::keys::validate_segment("node", &name)?;
    Ok(Node {
        qdrant: Qdrant::new(&a.qdrant_url, key)?,
        name,
        snapshots_dir: a.snapshots_dir.clone(),
        qdrant_snapshots_dir: a.qdrant_snapshots_dir.clone(),
    })
}

fn s3_config(a: &S3Args) -> S3Config {
    S3Config {
        endpoint: a.s3_endpoint.clone(),
        region: a.s3_region.clone(),
        static_credentials: None,
        sse: a.s3_sse.clone(),
        sse_kms_key_id: a.s3_sse_kms_key_id.clone(),
        virtual_hosted_style: a.s3_virtual_hosted,
    }
}

async fn target(url: &str, s3: &S3Args) -> Result<(Target, Location)> {
    let loc = Location::parse(url)?;
    let store = store::open(&loc, &s3_config(s3)).await?;
    Ok((
        Target {
            store,
            prefix: loc.prefix().to_string(),
        },
        loc,
    ))
}

async fn read(p: &std::path::Path) -> Result<Vec<u8>> {
    tokio::fs::read(p).await.map_err(|e| Error::io(p, e))
}

async fn read_secret(p: &std::path::Path) -> Result<String> {
    let s = String::from_utf8(read(p).await?)
        .map_err(|_| Error::Invalid(format!("{} is not UTF-8", p.display())))?;
    let s = s.trim().to_string();
    if s.is_empty() {
        return Err(Error::Invalid(format!("{} is empty", p.display())));
    }
    Ok(s)
}

fn default_backup_name() -> String {
    jiff::Timestamp::now()
        .strftime("backup-%Y%m%d-%H%M%S")
        .to_string()
}

/// Runs one task with a progress display and Ctrl-C cancellation; returns
/// its result and its final state.
async fn run_task<T>(
    kind: TaskKind,
    name: &str,
    work: impl AsyncFnOnce(&Progress, &CancellationToken) -> Result<T>,
) -> Result<(T, Task)> {
    let progress = cli_progress(kind, name);
    let cancel = cancel_on_ctrl_c();
    let display = show_progress(progress.clone());
    let r = work(&progress, &cancel).await;
    progress.finish(r.as_ref().map(|_| ()));
    let _ = display.await;
    Ok((r?, progress.get()))
}

fn cli_progress(kind: TaskKind, name: &str) -> Progress {
    let mut t = Task {
        task_id: "cli".into(),
        backup_name: name.into(),
        started_at: now(),
        ..Default::default()
    };
    t.set_kind(kind);
    t.set_phase(TaskPhase::Running);
    Progress::new(t)
}

fn cancel_on_ctrl_c() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: cancelling and cleaning up");
            t.cancel();
        }
    });
    token
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

/// A progress line on a terminal; a log line per finished object otherwise.
fn show_progress(p: Progress) -> tokio::task::JoinHandle<()> {
    let tty = std::io::stderr().is_terminal();
    let mut rx = p.subscribe();
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let t = rx.borrow_and_update().clone();
            if tty {
                let total = if t.bytes_total > 0 {
                    format!("/{}", mib(t.bytes_total))
                } else {
                    String::new()
                };
                eprint!(
                    "\r{} {}/{} objects, {}{} MiB   ",
                    t.backup_name,
                    t.shards_done,
                    t.shards_total,
                    mib(t.bytes_done),
                    total
                );
            } else {
                for r in t.results.iter().skip(seen) {
                    tracing::info!(collection = %r.collection, shard = ?r.shard_id, key = %r.key, bytes = r.size, sha256 = %r.sha256, "object done");
                }
            }
            seen = t.results.len();
            if qdrant_agent::progress::is_terminal(t.phase()) {
                if tty {
                    eprintln!();
                }
                return;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            if tty {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1024.0 * 1024.0))
}
