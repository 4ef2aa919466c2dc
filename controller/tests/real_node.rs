//! The product as a user installs it, on a real node: pods run by a real
//! kubelet with containerd and runc from the images built from this
//! checkout's Dockerfiles (`scripts/images.sh`), with their security
//! contexts, Secret file modes, read-only root filesystems and entrypoints
//! applied, and cluster DNS from CoreDNS. The operator runs on the host as
//! its ServiceAccount (the API server listens on loopback, which pods cannot
//! reach), with its webhook reached by URL; it reaches the agents at their
//! pod IPs as installed. S3 is moto on the node's bridge address.
//!
//! One node per machine: these tests run one at a time (the `real-node`
//! test group in `.config/nextest.toml`).

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use qdrant_operator::crd::QdrantRestoreStatus;
use serde_json::{Value, json};
use test_support::node::{self, Node};
use test_support::real_qdrant::{all_points, call};
use test_support::s3_server::S3Server;
use test_support::stack::{World, cluster_yaml, need};

const NS: &str = "search";
const API_KEY: &str = "node-api-key-51d0";
/// (name, shards, replication factor).
const COLLECTIONS: [(&str, u32, u32); 2] = [("docs", 3, 2), ("images", 2, 1)];
const POINTS: u64 = 200;

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What to read when a step does not happen: the operator's log, the pods,
/// their containers' logs and the kubelet's.
fn diagnosis(w: &World, node: &Node, operator_log: &str) -> String {
    let out = |args: &[&str]| {
        w.cp.kubectl(args)
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    };
    let pods = out(&["-n", NS, "get", "pods", "-o", "name"]);
    let mut logs = String::new();
    for p in pods.lines() {
        logs.push_str(&format!(
            "--- {p}\n{}\n",
            tail(
                &out(&["-n", NS, "logs", p, "--all-containers", "--tail=8"]),
                16
            )
        ));
    }
    format!(
        "operator log:\n{}\nobjects:\n{}\nbackups and restores:\n{}\nevents:\n{}\npod logs:\n{logs}\nkubelet:\n{}",
        tail(operator_log, 30),
        out(&["-n", NS, "get", "qc,sts,pods,pvc", "-o", "wide"]),
        out(&[
            "-n",
            NS,
            "get",
            "qb,qr",
            "-o",
            "jsonpath={range .items[*]}{.kind} {.metadata.name}: {.status.phase} {.status.conditions[0].reason}: {.status.conditions[0].message}{\"\\n\"}{end}"
        ]),
        tail(
            &out(&["-n", NS, "get", "events", "--sort-by=.lastTimestamp"]),
            15
        ),
        node.log_tail("kubelet.log", 10),
    )
}

fn seed(base: &str) {
    for (name, shards, rf) in COLLECTIONS {
        need(call(
            "PUT",
            base,
            &format!("/collections/{name}?wait=true"),
            Some(API_KEY),
            Some(json!({"vectors": {"size": 4, "distance": "Cosine"},
                        "shard_number": shards, "replication_factor": rf})),
        ));
        let points: Vec<Value> = (1..=POINTS)
            .map(|i| {
                let f = i as f32;
                json!({"id": i, "vector": [f, f * 0.5 + 1.0, 3.0, -f],
                       "payload": {"n": i, "collection": name}})
            })
            .collect();
        need(call(
            "PUT",
            base,
            &format!("/collections/{name}/points?wait=true"),
            Some(API_KEY),
            Some(json!({"points": points})),
        ));
    }
}

async fn pod_ip(pods: &Api<Pod>, name: &str) -> String {
    pods.get(name)
        .await
        .ok()
        .and_then(|p| p.status?.pod_ip)
        .unwrap_or_else(|| panic!("{name} has no IP"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_real_pods_backs_up_and_restores_into_two_nodes() {
    let images = need(node::image_archives());
    let w = World::start_for_node().await;
    let node = need(Node::start(&w.cp, &images).await);
    let s3 = need(S3Server::start_on(node::GATEWAY));
    let bucket = need(s3.bucket("node"));
    let operator = w.operator("qdrant-operator-0");
    let diag = || diagnosis(&w, &node, &operator.log_text());

    w.kubectl(&["create", "namespace", NS]);
    w.secret(NS, "qdrant-api-key", &[("api-key", API_KEY)]);
    w.secret(
        NS,
        "s3",
        &[
            ("AWS_ACCESS_KEY_ID", "AKIANODE"),
            ("AWS_SECRET_ACCESS_KEY", "node-secret-Hh52"),
        ],
    );
    w.apply(&node.local_volumes("storage", 5, "1Gi"));
    w.apply(&cluster_yaml(NS, "vectors", 3));
    w.running(NS, "vectors", 3, 240, &diag).await;

    // The rendered pods run the images as built, as the users the
    // Dockerfiles and the operator say, with read-only roots.
    let pods: Api<Pod> = Api::namespaced(w.admin.clone(), NS);
    let p = pods.get("vectors-0").await.unwrap();
    let spec = p.spec.as_ref().unwrap();
    for c in &spec.containers {
        let sc = c.security_context.as_ref();
        assert_eq!(
            sc.and_then(|s| s.read_only_root_filesystem),
            Some(true),
            "{}",
            c.name
        );
    }
    let statuses = p
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .clone()
        .unwrap();
    let images_run: Vec<&str> = statuses.iter().map(|s| s.image.as_str()).collect();
    assert!(
        images_run
            .iter()
            .any(|i| i.contains("qdrant/qdrant:v1.18.3"))
            && images_run
                .iter()
                .any(|i| i.contains("qdrant-operator/qdrant-agent:")),
        "{images_run:?}"
    );
    assert!(statuses.iter().all(|s| s.ready), "{statuses:?}");

    // Qdrant's three nodes found one another by their cluster DNS names.
    let source = format!("http://{}:6333", pod_ip(&pods, "vectors-0").await);
    let (code, body) = need(test_support::real_qdrant::get(
        &source,
        "/cluster",
        Some(API_KEY),
    ));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["result"]["peers"].as_object().map(|p| p.len()),
        Some(3),
        "{body}"
    );
    seed(&source);

    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {{name: nightly, namespace: {NS}}}\n\
         spec:\n  clusterRef: {{name: vectors}}\n  storage:\n    s3: {{bucket: {bucket}, prefix: node, region: us-east-1, \
         endpoint: \"{}\", credentialsSecretRef: {{name: s3}}}}\n",
        s3.endpoint
    ));
    let _ = w
        .completed::<Value>(NS, "qdrantbackups", "nightly", 300, &diag)
        .await;

    w.apply(&cluster_yaml(NS, "restored", 2));
    w.running(NS, "restored", 2, 240, &diag).await;
    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantRestore\nmetadata: {{name: into-two, namespace: {NS}}}\n\
         spec:\n  backupRef: {{name: nightly}}\n  targetClusterRef: {{name: restored}}\n"
    ));
    let _ = w
        .completed::<QdrantRestoreStatus>(NS, "qdrantrestores", "into-two", 300, &diag)
        .await;
    let target = format!("http://{}:6333", pod_ip(&pods, "restored-0").await);
    for (name, shards, _) in COLLECTIONS {
        let want = need(all_points(&source, name, Some(API_KEY)));
        assert_eq!(want.len() as u64, POINTS, "{name}");
        let got = need(all_points(&target, name, Some(API_KEY)));
        assert_eq!(got, want, "{name}: restored points differ");
        let info = need(call(
            "GET",
            &target,
            &format!("/collections/{name}"),
            Some(API_KEY),
            None,
        ));
        assert_eq!(
            info["config"]["params"]["shard_number"],
            json!(shards),
            "{name}: {info}"
        );
    }
}
