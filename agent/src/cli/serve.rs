//! `qdrant-agent serve`: the sidecar mode.

use super::{QdrantArgs, S3Args, SseArgs, node, s3_config};
use crate::server::{AgentService, Auth, auth, serve};
use crate::{Error, Result};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

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

pub async fn run(a: ServeArgs) -> Result<()> {
    let node = node(&a.qdrant)?;
    let token = match &a.token_file {
        Some(p) => Some(auth::token_from_file(p).await?),
        None => None,
    };
    let (tls, certificate_sha256) = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => {
            let (tls, sha) = auth::tls_from_files(c, k, a.tls_client_ca.as_deref()).await?;
            (Some(tls), sha)
        }
        _ => (None, String::new()),
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
    tracing::info!(%addr, qdrant = %node.qdrant.url(), node = %node.name, token = auth.token.is_some(), tls = auth.tls.is_some(), certificate_sha256, "agent serving");
    let health_listener = match a.health_listen {
        Some(h) => Some(
            tokio::net::TcpListener::bind(h)
                .await
                .map_err(|e| Error::io(h.to_string(), e))?,
        ),
        None => None,
    };
    for p in node.sweep_leftovers() {
        tracing::info!(path = %p.display(), "removed a file a killed agent left on the snapshots volume");
    }
    let service = AgentService::new(node, s3_config(&a.s3, &a.sse))
        .allow_local_targets(a.allow_local_targets);
    serve(listener, health_listener, service, auth, shutdown_signal()).await
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
