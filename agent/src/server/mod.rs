//! The gRPC face of the agent: `qdrant.agent.v1.Agent` (in `service`),
//! plus health and reflection (v1 and v1alpha, so grpcurl 1.8 works without
//! a proto file). Authentication is in `auth`, the task registry in
//! `tasks`, proto <-> domain in `convert`.

pub mod auth;
mod convert;
mod service;
mod tasks;
pub mod tls;

pub use auth::Auth;
pub use service::AgentService;

use crate::error::Error;
use auth::TokenCheck;
use qdrant_agent_proto::v1::agent_server::AgentServer;
use std::sync::Arc;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// How long shutdown waits for cancelled tasks to clean up: under
/// Kubernetes' default 30 s termination grace period.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(25);

/// How long a client has for its TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest a connection lives before it is closed gracefully (calls
/// in flight finish): the controller connects anew at each reconcile, so
/// only forgotten or hostile connections ever get this old.
pub const CONNECTION_AGE: std::time::Duration = std::time::Duration::from_secs(900);
/// HTTP/2 pings find peers that went away without closing.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(30);

/// A server builder with the limits every listener of the agent has.
fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_connection_age(CONNECTION_AGE)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
}

/// The agent service's name in gRPC health.
pub const HEALTH_NAME: &str = <AgentServer<AgentService> as tonic::server::NamedService>::NAME;

/// Serves only gRPC health in plaintext on `listener`, from `reporter`'s
/// statuses (probes and grpcurl cannot present the client certificate).
/// It runs from the agent's start, before it can serve tasks.
pub fn serve_health(
    listener: tokio::net::TcpListener,
    reporter: HealthReporter,
) -> tokio::task::JoinHandle<()> {
    let svc = HealthServer::new(HealthService::from_health_reporter(reporter));
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        if let Err(e) = server()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!(error = %e, "health server stopped");
        }
    })
}

/// Serves the agent on `listener`, its health from `health` (set serving
/// here).
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: HealthReporter,
    service: AgentService,
    auth: Auth,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let registry = service.registry();
    // On SIGTERM (pod deletion) every running task is cancelled: its
    // uploads are aborted and its partial objects deleted, within the
    // pod's grace period, instead of being dropped mid-way.
    let tasks = registry.clone();
    let shutdown = async move {
        shutdown.await;
        tasks.cancel_all();
    };
    auth.check()?;
    health.set_serving::<AgentServer<AgentService>>().await;
    let health_service = HealthServer::new(HealthService::from_health_reporter(health));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(qdrant_agent_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(qdrant_agent_proto::errors::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let agent = tonic::service::interceptor::InterceptedService::new(
        AgentServer::new(service)
            .max_decoding_message_size(qdrant_agent_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(qdrant_agent_proto::MAX_MESSAGE_BYTES),
        TokenCheck(auth.token.map(Arc::from)),
    );
    let router = server()
        .add_service(health_service)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(agent);
    // TLS is terminated here rather than by tonic, so that renewed
    // certificate files are served without a restart.
    let served = match auth.tls {
        Some(tls) => {
            let watch = tls.clone().watch(tls::RELOAD_EVERY);
            let served = router
                .serve_with_incoming_shutdown(tls::incoming(listener, tls), shutdown)
                .await;
            watch.abort();
            served
        }
        None => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
    .map_err(|e| Error::Internal(format!("gRPC server: {e}")));
    if !registry.idle(SHUTDOWN_GRACE).await {
        tracing::warn!(
            "tasks still running at shutdown; their uploads may stay open until the next task of this node"
        );
    }
    served
}
