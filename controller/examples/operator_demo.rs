//! The operator's backup and restore, locally: the QdrantBackup and
//! QdrantRestore reconcilers against an in-memory Kubernetes API (a test
//! double), three simulated pods each with a real `qdrant-agent` (mutual
//! TLS) and a Qdrant test double, and the S3 server at `TEST_S3_ENDPOINT`
//! (or a moto it starts). Run by `scripts/demo.sh`.

#[path = "../tests/common/kube_double.rs"]
mod kube_double;
#[path = "../tests/common/pods.rs"]
mod pods;

use qdrant_operator::agent_client::ClientIdentity;
use qdrant_operator::crd::{QdrantBackup, QdrantRestore};
use qdrant_operator::{backup_controller, restore_controller};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn show(what: &str, status: &serde_json::Value) {
    let ready = &status["conditions"][0];
    println!(
        "  {what}: phase={} {} {}",
        status["phase"].as_str().unwrap_or("-"),
        ready["reason"].as_str().unwrap_or(""),
        ready["message"].as_str().unwrap_or("")
    );
}

#[tokio::main]
async fn main() {
    let s3 = test_support::s3_server::S3Server::start().expect("S3 server");
    let bucket = s3.bucket("demo").unwrap();
    let kube = kube_double::KubeDouble::default();
    let client = kube.client(pods::NS);
    pods::s3_secret(&kube, "s3-creds");

    println!(
        "== a 3-node QdrantCluster 'vectors': docs (4 shards x3 replicas), images (2 shards x2)"
    );
    let source = pods::Cluster::start("vectors", 3, 40, "1.18.3").await;
    source.register(&kube, "1.18.3");
    let d = &source.doubles[0];
    d.add_replicated_collection("docs", 384, &[16 * MIB, 8 * MIB, 8 * MIB, 4 * MIB], 3);
    d.add_replicated_collection("images", 512, &[8 * MIB, 8 * MIB], 2);
    d.add_alias("docs-current", "docs");

    println!("== kubectl apply QdrantBackup 'nightly-1'");
    let storage = json!({"s3": {"bucket": bucket, "endpoint": s3.endpoint, "region": "us-east-1",
                                "credentialsSecretRef": {"name": "s3-creds"}}});
    kube.create(
        pods::QB,
        &json!({"apiVersion": "qdrant.io/v1alpha1", "kind": "QdrantBackup",
            "metadata": {"name": "nightly-1", "namespace": pods::NS},
            "spec": {"clusterRef": {"name": "vectors"}, "storage": storage}}),
    );
    let mut ctx = backup_controller::Context::new(
        client.clone(),
        Arc::new(ClientIdentity::fixed(source.tls.clone())),
    );
    ctx.follow_window = Duration::from_millis(500);
    let ctx = Arc::new(ctx);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    let backup = loop {
        let v = kube.get(pods::QB, "nightly-1").expect("backup");
        let line = v["status"].to_string();
        if line != last {
            show("backup", &v["status"]);
            last = line;
        }
        if matches!(v["status"]["phase"].as_str(), Some("Completed" | "Failed")) {
            break v;
        }
        assert!(Instant::now() < deadline, "the backup did not end");
        let b: QdrantBackup = serde_json::from_value(v).unwrap();
        if let Err(e) = backup_controller::reconcile(Arc::new(b), ctx.clone()).await {
            eprintln!("  reconcile error (retried): {e}");
        }
    };
    let st = &backup["status"];
    println!(
        "  {} bytes in {}; one upload per shard, from these pods:",
        st["sizeBytes"], st["s3Path"]
    );
    for c in st["collections"].as_array().into_iter().flatten() {
        for s in c["shards"].as_array().into_iter().flatten() {
            println!(
                "    {}/{} <- {} sha256 {}..",
                c["name"].as_str().unwrap_or(""),
                s["shardId"],
                s["pod"].as_str().unwrap_or(""),
                &s["sha256"].as_str().unwrap_or("")[..12]
            );
        }
    }

    println!(
        "== a 2-node QdrantCluster 'staging'; kubectl apply QdrantRestore (docs as docs-restored)"
    );
    let target = pods::Cluster::start("staging", 2, 44, "1.18.3").await;
    target.register(&kube, "1.18.3");
    kube.create(
        pods::QR,
        &json!({"apiVersion": "qdrant.io/v1alpha1", "kind": "QdrantRestore",
            "metadata": {"name": "to-staging", "namespace": pods::NS},
            "spec": {"backupRef": {"name": "nightly-1"}, "targetClusterRef": {"name": "staging"},
                     "collectionMapping": {"docs": "docs-restored"}}}),
    );
    let mut rctx = restore_controller::Context::new(
        client.clone(),
        Arc::new(ClientIdentity::fixed(target.tls.clone())),
    );
    rctx.follow_window = Duration::from_millis(500);
    let rctx = Arc::new(rctx);
    let mut last = String::new();
    loop {
        let v = kube.get(pods::QR, "to-staging").expect("restore");
        let line = format!("{}{}", v["status"]["stage"], v["status"]["phase"]);
        if line != last {
            println!("  stage {}", v["status"]["stage"].as_str().unwrap_or("-"));
            show("restore", &v["status"]);
            last = line;
        }
        if matches!(v["status"]["phase"].as_str(), Some("Completed" | "Failed")) {
            break;
        }
        assert!(Instant::now() < deadline, "the restore did not end");
        let r: QdrantRestore = serde_json::from_value(v).unwrap();
        if let Err(e) = restore_controller::reconcile(Arc::new(r), rctx.clone()).await {
            eprintln!("  reconcile error (retried): {e}");
        }
    }
    for (i, d) in target.doubles.iter().enumerate() {
        let shards: Vec<String> = d
            .collection_names()
            .iter()
            .map(|c| {
                let col = d.collection(c).unwrap();
                format!("{c} shards {:?}", col.shards.keys().collect::<Vec<_>>())
            })
            .collect();
        println!(
            "  staging-{i}: {} ({} uploads)",
            shards.join(", "),
            d.uploads().len()
        );
    }
    println!("  aliases: {:?}", target.doubles[0].aliases());
    println!("== events");
    for (reason, note) in kube.events(pods::NS) {
        println!("  {reason}: {note}");
    }
}
