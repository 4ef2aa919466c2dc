//! How the controller reaches an agent: mutual TLS with the operator's CA
//! (the agent's certificate names `<pod>.<headless>.<ns>.svc`) plus the
//! cluster's bearer token. Only task requests and results cross this
//! channel; snapshot data never does.

use qdrant_agent_proto::v1::agent_client::AgentClient;
use std::time::Duration;
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
        // Every call has a deadline: an agent that accepts a call and never
        // answers holds its reconcile (and with it a worker every namespace
        // shares) for this long at most.
        if !req.metadata().contains_key("grpc-timeout") {
            req.set_timeout(CALL_DEADLINE);
        }
        Ok(req)
    }
}

/// How long a call may take until its answer starts, unless it says more.
pub const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// The deadline of calls whose work grows with the backup (WriteManifest
/// checks every object, DeleteBackup deletes them).
pub const LONG_CALL_DEADLINE: Duration = Duration::from_secs(300);

/// `msg` as a request with the long deadline.
pub fn long_call<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(LONG_CALL_DEADLINE);
    r
}

pub type Client = AgentClient<InterceptedService<Channel, Bearer>>;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("agent at {addr}: {detail}")]
    Transport { addr: String, detail: String },
    #[error("agent token is not a valid header value")]
    BadToken,
}

/// How long the controller waits on an agent. Without them one black-holed
/// agent (a frozen process, a dropped network path) would hang the
/// reconcile of its resource forever.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// TCP connect and TLS handshake.
    pub connect: Duration,
    /// Each call until its response starts (a stream may then go on).
    pub call: Duration,
    /// HTTP/2 pings: a connection whose peer does not answer a ping within
    /// `keepalive_timeout` is closed, failing every call and stream on it.
    pub keepalive: Duration,
    pub keepalive_timeout: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            // A backstop: WriteManifest checks every object of a backup, so
            // it is generous; a silent peer is caught by keepalive first.
            call: Duration::from_secs(300),
            keepalive: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// A TLS channel to `addr` (host:port, e.g. the pod IP) verifying the agent
/// as `server_name` (its DNS name under the headless Service).
pub async fn channel(
    addr: &str,
    server_name: &str,
    tls: &AgentTls,
) -> Result<Channel, ConnectError> {
    channel_with(addr, server_name, tls, Deadlines::default()).await
}

pub async fn channel_with(
    addr: &str,
    server_name: &str,
    tls: &AgentTls,
    d: Deadlines,
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
    let endpoint = Channel::from_shared(format!("https://{addr}"))
        .map_err(|e| ConnectError::Transport {
            addr: addr.to_string(),
            detail: e.to_string(),
        })?
        .connect_timeout(d.connect)
        .timeout(d.call)
        .http2_keep_alive_interval(d.keepalive)
        .keep_alive_timeout(d.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tls_config(cfg)
        .map_err(err)?;
    // tonic's connect timeout stops at TCP: a peer that accepts but never
    // finishes the TLS handshake (a frozen agent) would hang here for good.
    match tokio::time::timeout(d.connect, endpoint.connect()).await {
        Ok(r) => r.map_err(err),
        Err(_) => Err(ConnectError::Transport {
            addr: addr.to_string(),
            detail: format!("no TLS handshake within {}s", d.connect.as_secs()),
        }),
    }
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
    Ok(
        AgentClient::with_interceptor(channel(addr, server_name, tls).await?, Bearer(bearer))
            .max_decoding_message_size(qdrant_agent_proto::MAX_ANSWER_BYTES)
            .max_encoding_message_size(qdrant_agent_proto::MAX_MESSAGE_BYTES),
    )
}

/// The controller's client certificate, issued by the operator's CA and
/// issued again before it expires, so a long-running controller
/// never presents an expired one.
pub struct ClientIdentity {
    ca: Option<std::sync::Arc<crate::pki::Ca>>,
    current: std::sync::Mutex<(AgentTls, Option<jiff::Timestamp>)>,
}

impl ClientIdentity {
    pub fn issue(ca: std::sync::Arc<crate::pki::Ca>) -> Result<Self, crate::pki::PkiError> {
        let (tls, not_after) = Self::sign(&ca)?;
        Ok(Self {
            ca: Some(ca),
            current: std::sync::Mutex::new((tls, Some(not_after))),
        })
    }

    /// A fixed identity, never renewed.
    pub fn fixed(tls: AgentTls) -> Self {
        Self {
            ca: None,
            current: std::sync::Mutex::new((tls, None)),
        }
    }

    fn sign(ca: &crate::pki::Ca) -> Result<(AgentTls, jiff::Timestamp), crate::pki::PkiError> {
        let leaf = ca.client_cert(jiff::Timestamp::now())?;
        Ok((
            AgentTls {
                ca_pem: ca.cert_pem.clone(),
                client_cert_pem: leaf.cert_pem,
                client_key_pem: leaf.key_pem,
            },
            leaf.not_after,
        ))
    }

    /// The identity to present now.
    pub fn get(&self) -> AgentTls {
        self.get_at(jiff::Timestamp::now())
    }

    fn get_at(&self, now: jiff::Timestamp) -> AgentTls {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(ca), Some(not_after)) = (&self.ca, cur.1)
            && now >= ca.renew_at(not_after)
        {
            match Self::sign(ca) {
                Ok((tls, not_after)) => *cur = (tls, Some(not_after)),
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the controller's client certificate")
                }
            }
        }
        cur.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_certificate_is_issued_again_before_it_expires() {
        let ca = std::sync::Arc::new(crate::pki::Ca::generate().unwrap());
        let id = ClientIdentity::issue(ca).unwrap();
        let first = id.get();
        assert_eq!(
            id.get().client_cert_pem,
            first.client_cert_pem,
            "stable while valid"
        );
        let late = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 340);
        let renewed = id.get_at(late);
        assert_ne!(renewed.client_cert_pem, first.client_cert_pem);
        assert_eq!(renewed.ca_pem, first.ca_pem);
        let fixed = ClientIdentity::fixed(first.clone());
        assert_eq!(fixed.get_at(late).client_cert_pem, first.client_cert_pem);
    }
}
