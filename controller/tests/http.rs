//! The operator's own endpoints: liveness, readiness that follows startup,
//! and Prometheus metrics that count reconciles.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use qdrant_operator::runtime::http::{Shared, router};
use qdrant_operator::runtime::metrics::Metrics;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tower::ServiceExt;

async fn get(shared: &Shared, path: &str) -> (StatusCode, String) {
    let resp = router(shared.clone())
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::new(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let shared = Shared {
        registry: Arc::new(registry),
        ready: ready.clone(),
    };

    assert_eq!(get(&shared, "/healthz").await.0, StatusCode::OK);
    assert_eq!(
        get(&shared, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    ready.store(true, Ordering::Relaxed);
    assert_eq!(get(&shared, "/readyz").await.0, StatusCode::OK);

    metrics
        .reconciles
        .get_or_create(&Metrics::kind("QdrantCluster"))
        .inc();
    metrics
        .duration
        .get_or_create(&Metrics::kind("QdrantCluster"))
        .observe(0.2);
    let (status, text) = get(&shared, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("qdrant_operator_reconciles_total{kind=\"QdrantCluster\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("qdrant_operator_reconcile_duration_seconds_count{kind=\"QdrantCluster\"} 1"),
        "{text}"
    );
}
