//! `qdrant-agent serve`: the sidecar mode.

use super::{QdrantArgs, S3Args, SseArgs, node, s3_config};
use crate::server::tls::{ReloadingTls, TlsFiles};
use crate::server::{AgentService, Auth, HEALTH_NAME, auth, serve, serve_health};
use crate::{Error, Result};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

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
    #[command(flatten)]
    pub sse: SseArgs,
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
    /// kubelet probes and grpcurl, which cannot present TLS).
    #[arg(long)]
    pub health_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics (`GET /metrics`) in plain HTTP on this
    /// address: counts and durations only, so a scraper needs no client
    /// certificate.
    #[arg(long, env = "QDRANT_AGENT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// When the token or TLS files cannot be read or are invalid, keep
    /// running (health NOT_SERVING, the reason in the log) and read them
    /// again every 10 s instead of exiting: a sidecar that exits makes its
    /// whole pod NotReady, and so takes Qdrant's traffic down.
    #[arg(long)]
    pub wait_for_credentials: bool,
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

/// The token and TLS identity from their files, and the certificate's sha256.
async fn load_auth(a: &ServeArgs) -> Result<(Auth, String)> {
    let token = match &a.token_file {
        Some(p) => Some(auth::token_from_file(p).await?),
        None => None,
    };
    let (tls, certificate_sha256) = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => {
            let tls = ReloadingTls::load(TlsFiles {
                cert: c.clone(),
                key: k.clone(),
                client_ca: a.tls_client_ca.clone(),
            })
            .await?;
            let sha = tls.cert_sha256();
            (Some(std::sync::Arc::new(tls)), sha)
        }
        _ => (None, String::new()),
    };
    let auth = Auth {
        token,
        tls,
        insecure: a.insecure,
    };
    auth.check()?;
    Ok((auth, certificate_sha256))
}

/// How often credentials that did not load are read again.
const CREDENTIALS_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn run(a: ServeArgs) -> Result<()> {
    let node = node(&a.qdrant)?;
    // Health first: it answers (NOT_SERVING) while tasks cannot be served.
    let health = HealthReporter::new();
    health
        .set_service_status(HEALTH_NAME, ServingStatus::NotServing)
        .await;
    // Metrics are an extra: an address that cannot be bound is logged, and
    // tasks are served all the same.
    let _metrics_server = match a.metrics_listen {
        Some(m) => match tokio::net::TcpListener::bind(m).await {
            Ok(l) => Some(crate::metrics::serve(l)),
            Err(e) => {
                tracing::error!(address = %m, error = %e, "cannot serve metrics");
                None
            }
        },
        None => None,
    };
    let _health_server = match a.health_listen {
        Some(h) => Some(serve_health(
            tokio::net::TcpListener::bind(h)
                .await
                .map_err(|e| Error::io(h.to_string(), e))?,
            health.clone(),
        )),
        None => None,
    };
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let (auth, certificate_sha256) = loop {
        match load_auth(&a).await {
            Ok(loaded) => break loaded,
            Err(e) if a.wait_for_credentials => {
                tracing::error!(error = %e, reason = e.reason(), retry_seconds = CREDENTIALS_RETRY.as_secs(), "cannot serve tasks: the agent's credentials did not load (Qdrant is not affected); reading them again");
                tokio::select! {
                    _ = tokio::time::sleep(CREDENTIALS_RETRY) => {}
                    _ = &mut shutdown => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    };
    let listen = a.listen_addr();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io(listen.to_string(), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("listener", e))?;
    tracing::info!(%addr, qdrant = %node.qdrant.url(), node = %node.name, token = auth.token.is_some(), tls = auth.tls.is_some(), certificate_sha256, "agent serving");
    for p in node.sweep_leftovers() {
        tracing::info!(path = %p.display(), "removed a file a killed agent left on the snapshots volume");
    }
    let service = AgentService::new(node, s3_config(&a.s3, &a.sse))
        .allow_local_targets(a.allow_local_targets);
    serve(listener, health, service, auth, shutdown).await
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
