//! How the controller reaches an agent: mutual TLS with the operator's CA
//! (the agent's certificate names `<pod>.<headless>.<ns>.svc`) plus the
//! cluster's bearer token. Only task requests and results cross this
//! channel; snapshot data never does.

use qdrant_agent_proto::v1::agent_client::AgentClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

#[derive(Clone)]
pub struct AgentTls {
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Client = AgentClient<InterceptedService<Channel, Bearer>>;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("agent at {addr}: {detail}")]
    Transport { addr: String, detail: String },
    #[error("agent token is not a valid header value")]
    BadToken,
}

/// A TLS channel to `addr` (host:port, e.g. the pod IP) verifying the agent
/// as `server_name` (its DNS name under the headless Service).
pub async fn channel(
    addr: &str,
    server_name: &str,
    tls: &AgentTls,
) -> Result<Channel, ConnectError> {
    let err = |e: tonic::transport::Error| ConnectError::Transport {
        addr: addr.to_string(),
        detail: e.to_string(),
    };
    let cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .identity(Identity::from_pem(
            &tls.client_cert_pem,
            &tls.client_key_pem,
        ))
        .domain_name(server_name);
    Channel::from_shared(format!("https://{addr}"))
        .map_err(|e| ConnectError::Transport {
            addr: addr.to_string(),
            detail: e.to_string(),
        })?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tls_config(cfg)
        .map_err(err)?
        .connect()
        .await
        .map_err(err)
}

pub async fn connect(
    addr: &str,
    server_name: &str,
    tls: &AgentTls,
    token: Option<&str>,
) -> Result<Client, ConnectError> {
    let bearer = match token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| ConnectError::BadToken)?,
        ),
        None => None,
    };
    Ok(AgentClient::with_interceptor(
        channel(addr, server_name, tls).await?,
        Bearer(bearer),
    ))
}
