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
