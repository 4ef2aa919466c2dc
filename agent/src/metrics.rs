//! The agent's Prometheus metrics, served in plain HTTP on a port of their
//! own (`--metrics-listen`), so a scraper needs no client certificate.
//! Only counts and durations: no key, path, bucket or credential is ever a
//! label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    /// backup, restore, verify, drain.
    pub kind: String,
    /// succeeded, failed, cancelled.
    pub result: String,
}

pub struct Metrics {
    pub uploaded_bytes: Counter,
    pub downloaded_bytes: Counter,
    pub objects_uploaded: Counter,
    pub objects_downloaded: Counter,
    /// S3 requests, and their attempts: retries are the difference.
    pub s3_requests: Counter,
    pub s3_retries: Counter,
    pub memory_budget: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub memory_in_use: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub tasks: Family<TaskLabel, Histogram>,
    pub tasks_running: Gauge<f64, AtomicU64>,
}

static METRICS: OnceLock<(Metrics, Registry)> = OnceLock::new();

fn init() -> (Metrics, Registry) {
    let m = Metrics {
        uploaded_bytes: Counter::default(),
        downloaded_bytes: Counter::default(),
        objects_uploaded: Counter::default(),
        objects_downloaded: Counter::default(),
        s3_requests: Counter::default(),
        s3_retries: Counter::default(),
        memory_budget: Gauge::default(),
        memory_in_use: Gauge::default(),
        tasks: Family::new_with_constructor(|| {
            Histogram::new([
                1.0,
                10.0,
                60.0,
                300.0,
                900.0,
                3600.0,
                4.0 * 3600.0,
                12.0 * 3600.0,
            ])
        }),
        tasks_running: Gauge::default(),
    };
    let mut r = Registry::default();
    r.register(
        "qdrant_agent_uploaded_bytes",
        "Bytes uploaded to the object store (snapshot parts and objects)",
        m.uploaded_bytes.clone(),
    );
    r.register(
        "qdrant_agent_downloaded_bytes",
        "Bytes of objects read from the object store",
        m.downloaded_bytes.clone(),
    );
    r.register(
        "qdrant_agent_objects_uploaded",
        "Objects written whole to the object store",
        m.objects_uploaded.clone(),
    );
    r.register(
        "qdrant_agent_objects_downloaded",
        "Object reads from the object store (whole or ranges)",
        m.objects_downloaded.clone(),
    );
    r.register(
        "qdrant_agent_s3_requests",
        "Requests to the object store",
        m.s3_requests.clone(),
    );
    r.register(
        "qdrant_agent_s3_retries",
        "Attempts of requests to the object store beyond each one's first",
        m.s3_retries.clone(),
    );
    r.register(
        "qdrant_agent_memory_budget_bytes",
        "The memory budget all part and download buffers share (--memory-budget)",
        m.memory_budget.clone(),
    );
    r.register(
        "qdrant_agent_memory_in_use_bytes",
        "The part of the memory budget held by buffers now",
        m.memory_in_use.clone(),
    );
    r.register(
        "qdrant_agent_task_duration_seconds",
        "How long tasks took, by kind and result",
        m.tasks.clone(),
    );
    r.register(
        "qdrant_agent_tasks_running",
        "Tasks running now",
        m.tasks_running.clone(),
    );
    (m, r)
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS.get_or_init(init).0
}

/// The metrics in Prometheus' text format, the memory budget read now.
pub fn render() -> String {
    let (m, r) = METRICS.get_or_init(init);
    if let Some(b) = crate::budget::Budget::installed() {
        m.memory_budget.set(b.bytes() as i64);
        m.memory_in_use.set(b.in_use() as i64);
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, r) {
        tracing::warn!(error = %e, "could not encode the metrics");
    }
    out
}

/// Counts the S3 client's requests and their retries.
#[derive(Debug)]
pub struct S3Attempts;

impl aws_sdk_s3::config::Intercept for S3Attempts {
    fn name(&self) -> &'static str {
        "qdrant-agent-metrics"
    }

    fn read_before_execution(
        &self,
        _: &aws_sdk_s3::config::interceptors::BeforeSerializationInterceptorContextRef<'_>,
        _: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        get().s3_requests.inc();
        Ok(())
    }

    fn read_before_attempt(
        &self,
        _: &aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_sdk_s3::config::RuntimeComponents,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        // The request's own bag: marked at its first attempt, so any later
        // attempt of it is a retry.
        if cfg.load::<Attempted>().is_some() {
            get().s3_retries.inc();
        } else {
            cfg.interceptor_state().store_put(Attempted);
        }
        Ok(())
    }
}

/// Marks a request that was attempted once.
#[derive(Debug, Clone)]
struct Attempted;

impl aws_smithy_types::config_bag::Storable for Attempted {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

/// Serves `GET /metrics` (and nothing else) on `listener` in plain HTTP.
pub fn serve(listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                // One request per connection; its head fits 8 KiB, and a
                // client gets 10 s to send it.
                let mut buf = vec![0u8; 8192];
                let mut len = 0;
                let head = tokio::time::timeout(std::time::Duration::from_secs(10), async {
                    while len < buf.len() {
                        let n = tcp.read(&mut buf[len..]).await.ok()?;
                        if n == 0 {
                            return None;
                        }
                        len += n;
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            return Some(());
                        }
                    }
                    None
                })
                .await;
                if !matches!(head, Ok(Some(()))) {
                    return;
                }
                let line = String::from_utf8_lossy(&buf[..len]);
                let target = line.split_whitespace().take(2).collect::<Vec<_>>();
                let (status, kind, body) = match target.as_slice() {
                    ["GET", path] if path.split('?').next() == Some("/metrics") => (
                        "200 OK",
                        "text/plain; version=0.0.4; charset=utf-8",
                        render(),
                    ),
                    _ => (
                        "404 Not Found",
                        "text/plain; charset=utf-8",
                        "only GET /metrics is served here\n".to_string(),
                    ),
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(reply.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    })
}
