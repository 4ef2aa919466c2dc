//! The operator, end to end, on real systems and all on this machine: a
//! real Kubernetes control plane (etcd, kube-apiserver, kube-controller-
//! manager), `kubectl apply -k manifests/`, the `qdrant-operator` binary as
//! its own ServiceAccount, pods run by a test kubelet with the real Qdrant
//! 1.18.3 and the real `qdrant-agent`, and S3 from moto. A QdrantCluster of
//! 3 nodes gets points, a QdrantBackup, then a QdrantRestore into a second
//! cluster of 2 nodes; the proof is printed side by side. Run by
//! `scripts/demo.sh`.

use qdrant_operator::crd::{QdrantBackupStatus, QdrantRestoreStatus};
use serde_json::{Value, json};
use sha2::Digest;
use std::time::Instant;
use test_support::real_qdrant::{all_points, call};
use test_support::s3_server::S3Server;
use test_support::stack::{World, cluster_yaml, need};

const NS: &str = "search";
const KEY: &str = "demo-api-key-0c5e";
/// (collection, shards, replication factor, points, dimensions)
const DATA: [(&str, u32, u32, u64, usize); 2] =
    [("docs", 4, 2, 20_000, 128), ("images", 2, 1, 5_000, 256)];

fn storage(bucket: &str, endpoint: &str) -> String {
    format!(
        "  storage:\n    s3: {{bucket: {bucket}, prefix: prod, region: us-east-1, endpoint: \"{endpoint}\", \
         credentialsSecretRef: {{name: backup-s3-credentials}}}}\n"
    )
}

fn seed(base: &str) {
    for (name, shards, rf, n, dim) in DATA {
        need(call(
            "PUT",
            base,
            &format!("/collections/{name}?wait=true"),
            Some(KEY),
            Some(
                json!({"vectors": {"size": dim, "distance": "Cosine"}, "shard_number": shards,
                        "replication_factor": rf, "write_consistency_factor": rf}),
            ),
        ));
        for batch in (1..=n).collect::<Vec<_>>().chunks(1000) {
            let points: Vec<Value> = batch
                .iter()
                .map(|&i| {
                    let v: Vec<f32> = (0..dim).map(|d| ((i as usize * 31 + d * 7) % 97) as f32 / 97.0).collect();
                    json!({"id": i, "vector": v, "payload": {"n": i, "title": format!("{name} #{i}")}})
                })
                .collect();
            need(call(
                "PUT",
                base,
                &format!("/collections/{name}/points?wait=true"),
                Some(KEY),
                Some(json!({"points": points})),
            ));
        }
    }
    need(call(
        "POST",
        base,
        "/collections/aliases",
        Some(KEY),
        Some(
            json!({"actions": [{"create_alias": {"collection_name": "docs", "alias_name": "docs-current"}}]}),
        ),
    ));
}

/// (point count, sha256 of every point's id, vector and payload in id order)
fn digest(base: &str, name: &str) -> (usize, String) {
    digest_with(base, name, Some(KEY))
}

fn digest_with(base: &str, name: &str, key: Option<&str>) -> (usize, String) {
    let points = need(all_points(base, name, key));
    let mut h = sha2::Sha256::new();
    for p in &points {
        h.update(p.to_string().as_bytes());
    }
    (points.len(), hex::encode(h.finalize())[..16].to_string())
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}

/// `compare SRC_URL SRC_COLLECTION DST_URL DST_COLLECTION`: the proof
/// table's row for two collections of Qdrants without an API key (the CLI
/// part of scripts/demo.sh). Exits 1 when they differ.
fn compare(args: &[String]) {
    let [src, from, dst, to] = args else {
        eprintln!("usage: operator_demo compare SRC_URL SRC_COLLECTION DST_URL DST_COLLECTION");
        std::process::exit(2);
    };
    let (n1, d1) = digest_with(src, from, None);
    let (n2, d2) = digest_with(dst, to, None);
    println!(
        "   {:<22} {:>8} {:>8}  {:<16}  {:<16}  ",
        "", "source", "restored", "source digest", "restored digest"
    );
    let ok = n1 == n2 && d1 == d2;
    println!(
        "   {:<22} {n1:>8} {n2:>8}  {d1}  {d2}  {}",
        format!("{from}->{to}"),
        if ok { "match" } else { "DIFFER" }
    );
    if !ok {
        std::process::exit(1);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("compare") {
        return compare(&args[1..]);
    }
    let t0 = Instant::now();
    println!("== a real Kubernetes 1.36 control plane on 127.0.0.1; kubectl apply -k manifests/");
    let w = World::start().await;
    let operator = w.operator("qdrant-operator-0");
    let kubelet = w.kubelet(NS);
    // What a failed step shows: the operator's last lines, then the
    // resources' statuses and the pods.
    let diag = || {
        let log = operator
            .log_text()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n");
        let objects =
            w.cp.kubectl(&["-n", NS, "get", "qdrant,pods", "-o", "yaml"])
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
        let mut pods = String::new();
        for pod in ["vectors-restored-0", "vectors-restored-1"] {
            // What each Qdrant knows of the cluster: peers, raft term and
            // commit, consensus thread status.
            let ip = w.kubectl(&[
                "-n",
                NS,
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.status.podIP}",
            ]);
            if !ip.is_empty() {
                let cluster = call(
                    "GET",
                    &format!("http://{ip}:6333"),
                    "/cluster",
                    Some(KEY),
                    None,
                )
                .map(|v| v.to_string())
                .unwrap_or_else(|e| e.to_string());
                pods.push_str(&format!("--- {pod} GET /cluster: {cluster}\n"));
            }
            for c in ["agent", "qdrant"] {
                let text = kubelet.logs(pod, c);
                let last: Vec<&str> = text.lines().rev().take(25).collect();
                pods.push_str(&format!("--- {pod}/{c}:\n"));
                for l in last.into_iter().rev() {
                    pods.push_str(l);
                    pods.push('\n');
                }
            }
        }
        format!("{log}\n{objects}\npods' last log lines:\n{pods}")
    };
    println!(
        "   the operator runs as ServiceAccount qdrant-operator/qdrant-operator (RBAC as in manifests/)"
    );

    w.kubectl(&["create", "namespace", NS]);
    w.secret(NS, "qdrant-api-key", &[("api-key", KEY)]);
    let s3 = need(S3Server::start());
    let bucket = need(s3.bucket("demo"));
    w.secret(
        NS,
        "backup-s3-credentials",
        &[
            ("AWS_ACCESS_KEY_ID", "demo"),
            ("AWS_SECRET_ACCESS_KEY", "demo"),
        ],
    );

    println!("== kubectl apply QdrantCluster vectors (3 nodes, distributed)");
    w.apply(&cluster_yaml(NS, "vectors", 3));
    w.running(NS, "vectors", 3, 300, &diag).await;
    print!("{}", w.kubectl(&["-n", NS, "get", "qc,pods"]));

    let ip = kubelet.pod_ip("vectors-0").await.unwrap();
    let source = format!("http://{ip}:6333");
    println!("== writing points through {source}");
    seed(&source);
    for (name, shards, rf, n, dim) in DATA {
        println!("   {name}: {n} points x {dim} dims, {shards} shards x {rf} replicas");
    }

    println!("== kubectl apply QdrantBackup before-migration");
    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {{name: before-migration, namespace: {NS}}}\n\
         spec:\n  clusterRef: {{name: vectors}}\n{}",
        storage(&bucket, &s3.endpoint)
    ));
    let st = w
        .completed::<QdrantBackupStatus>(NS, "qdrantbackups", "before-migration", 300, &diag)
        .await;
    println!(
        "   Completed: {} in {}, each shard once, from the pod holding an Active replica:",
        human(st.size_bytes.unwrap_or(0)),
        st.s3_path.clone().unwrap_or_default()
    );
    for c in &st.collections {
        for s in &c.shards {
            println!(
                "     {:<7} shard {}  from {:<10} {:>9}",
                c.name,
                s.shard_id.unwrap_or(0),
                s.pod,
                human(s.size)
            );
        }
    }

    println!(
        "== kubectl apply QdrantCluster vectors-restored (2 nodes) and QdrantRestore restore-all"
    );
    w.apply(&cluster_yaml(NS, "vectors-restored", 2));
    w.running(NS, "vectors-restored", 2, 300, &diag).await;
    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantRestore\nmetadata: {{name: restore-all, namespace: {NS}}}\n\
         spec:\n  backupRef: {{name: before-migration}}\n  targetClusterRef: {{name: vectors-restored}}\n"
    ));
    let _ = w
        .completed::<QdrantRestoreStatus>(NS, "qdrantrestores", "restore-all", 300, &diag)
        .await;
    print!("{}", w.kubectl(&["-n", NS, "get", "qb,qr"]));

    let ip = kubelet.pod_ip("vectors-restored-0").await.unwrap();
    let target = format!("http://{ip}:6333");
    println!("== proof: every point, vector and payload, source against restored");
    println!(
        "   {:<8} {:>8} {:>8}  {:<16}  {:<16}  ",
        "", "source", "restored", "source digest", "restored digest"
    );
    let mut all = true;
    for (name, ..) in DATA {
        let (n1, d1) = digest(&source, name);
        let (n2, d2) = digest(&target, name);
        let ok = n1 == n2 && d1 == d2;
        all &= ok;
        println!(
            "   {name:<8} {n1:>8} {n2:>8}  {d1}  {d2}  {}",
            if ok { "match" } else { "DIFFER" }
        );
    }
    let aliases = need(call("GET", &target, "/aliases", Some(KEY), None));
    let alias = aliases["aliases"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["alias_name"] == "docs-current");
    println!(
        "   alias docs-current -> docs on the restored cluster: {}",
        if alias { "yes" } else { "MISSING" }
    );
    println!("== done in {:.0}s", t0.elapsed().as_secs_f64());
    if !(all && alias) {
        std::process::exit(1);
    }
}
