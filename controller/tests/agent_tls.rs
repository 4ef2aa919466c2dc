//! The operator's PKI in a real mutual-TLS handshake: certificates from a
//! CA reloaded from its Secret are accepted, a client from another CA is not.

use qdrant_operator::agent_client::{AgentTls, Deadlines, channel, channel_with};
use qdrant_operator::pki::{Ca, agent_dns_names};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

async fn tls_server(ca: &Ca) -> String {
    let now = jiff::Timestamp::now();
    let leaf = ca
        .server_cert(agent_dns_names("vectors-headless", "search"), now)
        .unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem))
        .client_ca_root(Certificate::from_pem(&ca.cert_pem));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    addr
}

async fn check(addr: &str, name: &str, tls: &AgentTls) -> bool {
    let Ok(ch) = channel(addr, name, tls).await else {
        return false;
    };
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    h.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn certificates_from_a_reloaded_ca_pass_mutual_tls_and_strangers_do_not() {
    let original = Ca::generate().unwrap();
    // The controller restarts: it reloads the CA from its Secret.
    let ca = Ca::load(&original.cert_pem, &original.key_pem()).unwrap();
    let addr = tls_server(&ca).await;
    let client = ca.client_cert(jiff::Timestamp::now()).unwrap();
    let tls = AgentTls {
        ca_pem: original.cert_pem.clone(),
        client_cert_pem: client.cert_pem,
        client_key_pem: client.key_pem,
    };
    assert!(
        check(&addr, "vectors-0.vectors-headless.search.svc", &tls).await,
        "controller reaches the agent"
    );
    assert!(
        !check(&addr, "vectors-0.other-headless.search.svc", &tls).await,
        "the agent's name is verified"
    );

    let stranger = Ca::generate().unwrap();
    let rogue = stranger.client_cert(jiff::Timestamp::now()).unwrap();
    let bad = AgentTls {
        ca_pem: original.cert_pem.clone(),
        client_cert_pem: rogue.cert_pem,
        client_key_pem: rogue.key_pem,
    };
    assert!(
        !check(&addr, "vectors-0.vectors-headless.search.svc", &bad).await,
        "a client from another CA is refused"
    );
}

/// An agent that stops answering mid-connection (a frozen process, a
/// black-holed path) fails the next call within the deadlines instead of
/// hanging the reconcile.
#[tokio::test]
async fn an_agent_that_stops_answering_fails_calls_within_the_deadlines() {
    let ca = Ca::generate().unwrap();
    let addr = tls_server(&ca).await;
    let gate = test_support::gate::Gate::start(&addr).await.unwrap();
    let client = ca.client_cert(jiff::Timestamp::now()).unwrap();
    let tls = AgentTls {
        ca_pem: ca.cert_pem.clone(),
        client_cert_pem: client.cert_pem,
        client_key_pem: client.key_pem,
    };
    let d = Deadlines {
        connect: std::time::Duration::from_secs(2),
        call: std::time::Duration::from_secs(3),
        keepalive: std::time::Duration::from_secs(1),
        keepalive_timeout: std::time::Duration::from_secs(1),
    };
    let name = "vectors-0.vectors-headless.search.svc";
    let ch = channel_with(gate.url.trim_start_matches("http://"), name, &tls, d)
        .await
        .unwrap();
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    let req = || tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    h.check(req()).await.unwrap();
    gate.close();
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(std::time::Duration::from_secs(30), h.check(req())).await;
    assert!(
        matches!(r, Ok(Err(_))),
        "the call must fail, not hang: {r:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // A new connection to it (the controller connects each reconcile) gives
    // up within the connect deadline too, TLS handshake included.
    let started = std::time::Instant::now();
    let fresh = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        channel_with(gate.url.trim_start_matches("http://"), name, &tls, d),
    )
    .await;
    assert!(matches!(fresh, Ok(Err(_))), "connect must fail, not hang");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// A hostile or broken agent (any image can be named as the agent, any
/// StatefulSet can carry a `qdrant-agent` container): every method answers
/// as `mode` says.
#[derive(Clone, Copy)]
enum Hostile {
    /// Answers Status with a message just over the operator's bound.
    Huge,
    /// Accepts every call and never answers (the connection stays alive).
    Silent,
}

type TaskStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Task, tonic::Status>> + Send>>;

use qdrant_agent_proto::v1 as pb;
use tonic::{Request, Response, Status};

impl Hostile {
    async fn answer<T: Default>(&self) -> Result<Response<T>, Status> {
        std::future::pending::<()>().await;
        Ok(Response::new(T::default()))
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for Hostile {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        match self {
            Hostile::Huge => Ok(Response::new(pb::StatusResponse {
                node_name: "x".repeat(qdrant_agent_proto::MAX_ANSWER_BYTES),
                ..Default::default()
            })),
            Hostile::Silent => self.answer().await,
        }
    }
    async fn start_backup(
        &self,
        _: Request<pb::StartBackupRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.answer().await
    }
    async fn start_restore(
        &self,
        _: Request<pb::StartRestoreRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.answer().await
    }
    async fn start_verify(
        &self,
        _: Request<pb::StartVerifyRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.answer().await
    }
    async fn get_task(&self, _: Request<pb::TaskRef>) -> Result<Response<pb::Task>, Status> {
        self.answer().await
    }
    type WatchTaskStream = TaskStream;
    async fn watch_task(&self, _: Request<pb::TaskRef>) -> Result<Response<TaskStream>, Status> {
        std::future::pending::<()>().await;
        Err(Status::unavailable("never"))
    }
    async fn cancel_task(&self, _: Request<pb::TaskRef>) -> Result<Response<pb::Task>, Status> {
        self.answer().await
    }
    async fn list_tasks(
        &self,
        _: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        self.answer().await
    }
    async fn write_manifest(
        &self,
        _: Request<pb::WriteManifestRequest>,
    ) -> Result<Response<pb::WriteManifestResponse>, Status> {
        self.answer().await
    }
    async fn read_manifest(
        &self,
        _: Request<pb::ReadManifestRequest>,
    ) -> Result<Response<pb::ReadManifestResponse>, Status> {
        self.answer().await
    }
    async fn delete_backup(
        &self,
        _: Request<pb::DeleteBackupRequest>,
    ) -> Result<Response<pb::DeleteBackupResponse>, Status> {
        self.answer().await
    }
    async fn get_placement(
        &self,
        _: Request<pb::GetPlacementRequest>,
    ) -> Result<Response<pb::GetPlacementResponse>, Status> {
        self.answer().await
    }
    async fn start_drain(
        &self,
        _: Request<pb::StartDrainRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.answer().await
    }
    async fn get_disk(
        &self,
        _: Request<pb::GetDiskRequest>,
    ) -> Result<Response<pb::GetDiskResponse>, Status> {
        self.answer().await
    }
}

/// `mode` served with the agents' mutual TLS; its address.
async fn hostile_agent(ca: &Ca, mode: Hostile) -> String {
    let leaf = ca
        .server_cert(
            agent_dns_names("vectors-headless", "search"),
            jiff::Timestamp::now(),
        )
        .unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem))
        .client_ca_root(Certificate::from_pem(&ca.cert_pem));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let svc = pb::agent_server::AgentServer::new(mode).max_encoding_message_size(usize::MAX);
    tokio::spawn(async move {
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    addr
}

/// A hostile answer is refused before it is held in memory, with a reason
/// a person can read; a silent agent fails the call at its deadline. The
/// operator's memory and its reconciles (shared by every namespace) are
/// never at an agent's mercy.
#[tokio::test]
async fn a_hostile_agent_answer_is_refused_and_a_silent_one_times_out() {
    let ca = Ca::generate().unwrap();
    let client = ca.client_cert(jiff::Timestamp::now()).unwrap();
    let tls = AgentTls {
        ca_pem: ca.cert_pem.clone(),
        client_cert_pem: client.cert_pem,
        client_key_pem: client.key_pem,
    };
    let name = "vectors-0.vectors-headless.search.svc";
    let huge = hostile_agent(&ca, Hostile::Huge).await;
    let mut c = qdrant_operator::agent_client::connect(&huge, name, &tls, Some("t"))
        .await
        .unwrap();
    let e = c.status(pb::StatusRequest {}).await.unwrap_err();
    let (_, message) = qdrant_operator::agents::status_reason(&e);
    assert!(
        message.contains("message length too large"),
        "{:?}: {message}",
        e.code()
    );

    let silent = hostile_agent(&ca, Hostile::Silent).await;
    let mut c = qdrant_operator::agent_client::connect(&silent, name, &tls, Some("t"))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let e = tokio::time::timeout(
        qdrant_operator::agent_client::CALL_DEADLINE * 2,
        c.get_placement(pb::GetPlacementRequest::default()),
    )
    .await
    .expect("the call ends at its deadline")
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Cancelled, "{e:?}");
    assert!(started.elapsed() >= qdrant_operator::agent_client::CALL_DEADLINE);
}
