use super::*;

#[test]
fn create_body_keeps_the_collection_shape_and_renames_optimizer_config() {
    let config = json!({
        "params": {
            "vectors": {"size": 384, "distance": "Cosine", "on_disk": true},
            "shard_number": 6, "sharding_method": "custom", "replication_factor": 2,
            "write_consistency_factor": 1, "on_disk_payload": true,
            "sparse_vectors": {"text": {"modifier": "idf"}}
        },
        "hnsw_config": {"m": 32, "ef_construct": 200, "full_scan_threshold": 10000, "on_disk": false},
        "optimizer_config": {"deleted_threshold": 0.2, "indexing_threshold": 20000, "max_segment_size": null},
        "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0},
        "quantization_config": {"scalar": {"type": "int8", "always_ram": true}}
    });
    let body = create_body_from_config(&config).unwrap();
    assert_eq!(body["vectors"]["size"], 384);
    assert_eq!(body["shard_number"], 6);
    assert_eq!(body["sharding_method"], "custom");
    assert_eq!(body["replication_factor"], 2);
    assert_eq!(body["sparse_vectors"]["text"]["modifier"], "idf");
    assert_eq!(body["hnsw_config"]["m"], 32);
    assert_eq!(body["optimizers_config"]["indexing_threshold"], 20000);
    assert!(body["optimizers_config"].get("max_segment_size").is_none());
    assert!(body.get("optimizer_config").is_none());
    assert_eq!(body["quantization_config"]["scalar"]["type"], "int8");
    assert!(create_body_from_config(&json!({})).is_err());
}

#[test]
fn a_peer_qdrant_could_not_reach_is_named() {
    // Two answers of Qdrant 1.18.3 to GET /collections/{c} with a peer down.
    let refused = "Service internal error: 1 of 1 read operations failed: Service internal error: Tonic status error: code: 'The service is currently unavailable', message: \"tcp connect error\", source: tonic::transport::Error(Transport, ConnectError(ConnectError(\"tcp connect error\", 127.0.0.1:16351, Os { code: 111 })))";
    let failed = "Service internal error: 1 of 1 read operations failed: Service internal error: Tonic status error: code: 'The service is currently unavailable', message: \"Failed to connect to http://127.0.0.1:16351/, error: transport error\"";
    assert_eq!(
        unreachable_peer(refused).as_deref(),
        Some("peer 127.0.0.1:16351")
    );
    assert_eq!(
        unreachable_peer(failed).as_deref(),
        Some("peer http://127.0.0.1:16351/")
    );
    assert_eq!(
        unreachable_peer("Service internal error: service is currently unavailable").as_deref(),
        Some("a peer node")
    );
    assert_eq!(unreachable_peer("Wrong input: bad vector size"), None);
}

#[test]
fn minor_versions_compare() {
    assert_eq!(minor_version("1.18.3"), Some((1, 18)));
    assert_eq!(minor_version("v1.18.0-rc1"), Some((1, 18)));
    assert_eq!(minor_version("garbage"), None);
}

#[tokio::test]
async fn https_qdrant_urls_are_spoken_to_over_tls() {
    // A TLS server with a self-signed certificate: the agent must get as
    // far as the TLS handshake (an agent without TLS would stop at the
    // URL scheme instead).
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(cert.pem(), key.serialize_pem()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let q = Qdrant::new(&format!("https://localhost:{port}"), None).unwrap();
    let err = q.version().await.unwrap_err().to_string();
    // A TLS-level refusal (this server speaks only HTTP/2, so it may end
    // the handshake with an alert before the certificate is judged).
    assert!(
        err.contains("certificate") || err.contains("fatal alert"),
        "{err}"
    );
    assert!(!err.contains("scheme"), "{err}");
}

#[tokio::test]
async fn connection_errors_say_why() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let q = Qdrant::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
    let err = q.version().await.unwrap_err();
    assert_eq!(err.reason(), "QdrantUnreachable");
    assert!(
        err.to_string()
            .to_lowercase()
            .contains("connection refused"),
        "{err}"
    );
}

#[test]
fn url_credentials_are_dropped_and_segments_escaped() {
    let q = Qdrant::new("http://user:pw@localhost:6333/", None).unwrap();
    assert!(!q.url().as_str().contains("pw"));
    let u = q.endpoint(&["collections", "a b/c"]);
    assert_eq!(u.as_str(), "http://localhost:6333/collections/a%20b%2Fc");
    assert!(Qdrant::new("ftp://x", None).is_err());
}
