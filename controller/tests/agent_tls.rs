//! The operator's PKI in a real mutual-TLS handshake: certificates from a
//! CA reloaded from its Secret are accepted, a client from another CA is not.

use qdrant_operator::agent_client::{AgentTls, channel};
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
