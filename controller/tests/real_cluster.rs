//! The operator on real systems: a real kube-apiserver (RBAC on) and
//! kube-controller-manager, the `qdrant-operator` binary as its own
//! ServiceAccount, and a test kubelet running each pod with the real Qdrant
//! 1.18.3 and the real `qdrant-agent`.

#[path = "common/real.rs"]
mod real;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::Api;
use qdrant_operator::crd::{ClusterPhase, QdrantCluster};
use real::{World, eventually, need, repo};
use std::collections::BTreeSet;

const NS: &str = "search";
const API_KEY: &str = "real-cluster-api-key-7f3e";

/// The README's first cluster, as written: the example QdrantCluster (3
/// nodes, distributed) in namespace `search` with its API key Secret.
fn first_cluster(w: &World) {
    w.kubectl(&["create", "namespace", NS]);
    w.kubectl(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "qdrant-api-key",
        &format!("--from-literal=api-key={API_KEY}"),
    ]);
    let example =
        std::fs::read_to_string(repo().join("manifests/examples/qdrantcluster.yaml")).unwrap();
    w.apply(&example);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qdrant_cluster_runs_on_a_real_control_plane_with_only_the_operators_rbac() {
    let w = World::start().await;
    let operator = w.operator("qdrant-operator-0");
    let kubelet = w.kubelet(NS);
    first_cluster(&w);

    let clusters: Api<QdrantCluster> = Api::namespaced(w.admin.clone(), NS);
    let diag = || {
        format!(
            "operator log:\n{}\nkube-controller-manager:\n{}",
            tail(&operator.log_text(), 30),
            w.cp.log_tail("kube-controller-manager.log")
        )
    };
    // The StatefulSet exists: every object before it was applied as the
    // operator's ServiceAccount.
    let sts: Api<StatefulSet> = Api::namespaced(w.admin.clone(), NS);
    eventually(
        60,
        "the operator creates the StatefulSet",
        &diag,
        || async { sts.get_opt("vectors").await.ok().flatten() },
    )
    .await;
    // Pods come from the real StatefulSet controller, one at a time
    // (OrderedReady), each Ready only once its Qdrant and agent answer.
    let c = eventually(
        240,
        "QdrantCluster vectors Running with 3 ready",
        &diag,
        || async {
            let c = clusters.get("vectors").await.ok()?;
            let st = c.status.clone()?;
            (st.phase == Some(ClusterPhase::Running) && st.ready_replicas == 3).then_some(c)
        },
    )
    .await;
    assert_eq!(c.status.unwrap().observed_generation, c.metadata.generation);

    // The three Qdrant nodes formed one cluster through the rendered start
    // script and headless-Service names.
    let ip = kubelet.pod_ip("vectors-0").await.unwrap();
    let (code, body) = need(test_support::real_qdrant::get(
        &format!("http://{ip}:6333"),
        "/cluster",
        Some(API_KEY),
    ));
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["result"]["peers"].as_object().map(|p| p.len()),
        Some(3),
        "{body}"
    );
    // The API key from the Secret is enforced.
    let (code, _) = need(test_support::real_qdrant::get(
        &format!("http://{ip}:6333"),
        "/cluster",
        None,
    ));
    assert_eq!(code, 401);

    // Nothing the operator asked for was refused.
    let refused: BTreeSet<String> =
        w.cp.operator_requests()
            .iter()
            .filter(|e| e.code() == 403)
            .map(|e| format!("{} {}", e.verb, e.request_u_r_i))
            .collect();
    assert!(
        refused.is_empty(),
        "the API server refused the operator: {refused:#?}"
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
