//! What a backup costs the controller: the bytes its process read and wrote
//! (every socket included) against the bytes the backup moved, and its peak
//! RSS. The controller's reconciler runs in this process against the
//! in-memory Kubernetes API double; Qdrant (a 3-node `qdrant-double`), the
//! three `qdrant-agent`s and the S3 server (moto) are other processes.
//!
//! cargo build --release -p qdrant-agent -p test-support
//! cargo bench -p qdrant-operator --bench backup_footprint
//!
//! BENCH_SIZE_MIB (default 1024) is the backup's size, spread over four
//! collections of four shards, replication factor 2.

#[path = "../tests/common/kube_double.rs"]
mod kube_double;
#[path = "../tests/common/pods.rs"]
mod pods;

use qdrant_operator::agent_client::ClientIdentity;
use qdrant_operator::backup::reconcile;
use qdrant_operator::crd::{OperationPhase, QdrantBackup};
use qdrant_operator::runtime::{Context, metrics::Metrics};
use serde_json::json;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn proc_field(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Bytes this process read and wrote through any file descriptor.
fn io_bytes() -> u64 {
    proc_field("/proc/self/io", "rchar:") + proc_field("/proc/self/io", "wchar:")
}

#[tokio::main]
async fn main() {
    let mib: u64 = std::env::var("BENCH_SIZE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let shard_mib = (mib / 16).max(1);
    let dir = pods::agent_bin()
        .parent()
        .expect("target dir")
        .to_path_buf();
    let double_bin = dir.join("qdrant-double");
    assert!(
        double_bin.exists(),
        "build it first: cargo build --release -p qdrant-agent -p test-support"
    );
    let s3 = test_support::s3_server::S3Server::start().expect("moto_server");
    let bucket = s3.bucket("footprint").unwrap();
    let port = test_support::s3_server::free_port().unwrap();
    let mut qdrant = Command::new(&double_bin);
    qdrant
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--members", "3", "--replication-factor", "2"]);
    for c in ["docs", "images", "tags", "chunks"] {
        qdrant.args([
            "--collection",
            &format!("{c}:8:{shard_mib}M,{shard_mib}M,{shard_mib}M,{shard_mib}M"),
        ]);
    }
    let mut qdrant = qdrant
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qdrant-double");
    let urls: Vec<String> = (0..3)
        .map(|i| format!("http://127.0.0.1:{}", port + i))
        .collect();
    for u in &urls {
        let addr = u.trim_start_matches("http://");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "qdrant-double did not listen");
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    let cluster = pods::Cluster::with_qdrant("vectors", urls, 30, vec![]);
    let kube = kube_double::KubeDouble::default();
    cluster.register(&kube, "1.18.3");
    pods::s3_secret(&kube, "s3-creds");
    kube.create(
        pods::QB,
        &json!({"apiVersion": "qdrant.io/v1alpha1", "kind": "QdrantBackup",
            "metadata": {"name": "bench", "namespace": pods::NS},
            "spec": {"clusterRef": {"name": "vectors"},
                "storage": {"s3": {"bucket": bucket, "endpoint": s3.endpoint, "region": "us-east-1",
                                   "credentialsSecretRef": {"name": "s3-creds"}}}}}),
    );
    let ctx = Arc::new(Context::new(
        kube.client(pods::NS),
        Arc::new(qdrant_operator::pki::Ca::generate().unwrap()),
        Arc::new(ClientIdentity::fixed(cluster.tls.clone())),
        Arc::new(Metrics::new(&mut Default::default())),
    ));

    let io_before = io_bytes();
    let started = Instant::now();
    let mut reconciles = 0;
    let b = loop {
        let b: QdrantBackup = serde_json::from_value(kube.get(pods::QB, "bench").unwrap()).unwrap();
        let phase = b.status.as_ref().and_then(|s| s.phase);
        if matches!(
            phase,
            Some(OperationPhase::Completed | OperationPhase::Failed)
        ) {
            break b;
        }
        reconciles += 1;
        if let Err(e) = reconcile(Arc::new(b), ctx.clone()).await {
            eprintln!("reconcile error: {e}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let elapsed = started.elapsed();
    let io = io_bytes() - io_before;
    let _ = qdrant.kill();
    let _ = qdrant.wait();
    let status = b.status.unwrap();
    assert_eq!(
        status.phase,
        Some(OperationPhase::Completed),
        "{:?}",
        status.error
    );
    let size = status.size_bytes.unwrap_or(0);
    println!(
        "backup of 3 pods x 4 collections x 4 shards (replication 2): {} MiB in {:.1}s ({:.1} MiB/s), {reconciles} reconciles",
        size >> 20,
        elapsed.as_secs_f64(),
        size as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
    );
    println!(
        "controller process I/O during the backup: {} KiB read+written, {:.5}% of the backup's bytes",
        io >> 10,
        io as f64 * 100.0 / size.max(1) as f64
    );
    println!(
        "controller process peak RSS: {} MiB",
        proc_field("/proc/self/status", "VmHWM:") >> 10
    );
}
