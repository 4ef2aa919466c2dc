//! The operator on real systems: a real kube-apiserver (RBAC on) and
//! kube-controller-manager, the `qdrant-operator` binary as its own
//! ServiceAccount, and a test kubelet running each pod with the real Qdrant
//! 1.18.3 and the real `qdrant-agent`.

#[path = "common/real.rs"]
mod real;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::Api;
use qdrant_operator::crd::{
    ClusterPhase, OperationPhase, QdrantBackup, QdrantCluster, QdrantRestore,
};
use real::{World, eventually, need, repo};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use test_support::real_qdrant::{all_points, call};
use test_support::s3_server::S3Server;

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

/// Collections of several shard counts and replication factors, with
/// points (vector and payload) and an alias: (name, shards, replication).
const COLLECTIONS: [(&str, u32, u32); 3] = [("docs", 3, 2), ("images", 2, 1), ("logs", 1, 3)];
const POINTS: u64 = 300;

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
                       "payload": {"n": i, "collection": name, "tag": format!("t{}", i % 7)}})
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
    need(call(
        "POST",
        base,
        "/collections/aliases",
        Some(API_KEY),
        Some(
            json!({"actions": [{"create_alias": {"collection_name": "docs", "alias_name": "docs-current"}}]}),
        ),
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_runs_backs_up_and_restores_real_qdrant_with_only_its_rbac() {
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

    // A backup of real distributed collections: each shard stored once.
    let source = format!("http://{ip}:6333");
    seed(&source);
    let s3 = need(S3Server::start());
    let bucket = need(s3.bucket("real"));
    w.kubectl(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "backup-s3-credentials",
        "--from-literal=AWS_ACCESS_KEY_ID=AKIAREALE2E",
        "--from-literal=AWS_SECRET_ACCESS_KEY=real-e2e-secret-Zq81",
    ]);
    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {{name: before-migration, namespace: {NS}}}\n\
         spec:\n  clusterRef: {{name: vectors}}\n  storage:\n    s3: {{bucket: {bucket}, prefix: prod, region: us-east-1, \
         endpoint: \"{}\", credentialsSecretRef: {{name: backup-s3-credentials}}}}\n",
        s3.endpoint
    ));
    let backups: Api<QdrantBackup> = Api::namespaced(w.admin.clone(), NS);
    let b = eventually(
        180,
        "QdrantBackup before-migration Completed",
        &diag,
        || async {
            let b = backups.get("before-migration").await.ok()?;
            let phase = b.status.as_ref()?.phase?;
            assert_ne!(
                phase,
                OperationPhase::Failed,
                "backup failed: {:#?}",
                b.status
            );
            (phase == OperationPhase::Completed).then_some(b)
        },
    )
    .await;
    let st = b.status.unwrap();
    for (name, shards, _) in COLLECTIONS {
        let c = st
            .collections
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} in {st:#?}"));
        let ids: Vec<u32> = c.shards.iter().filter_map(|s| s.shard_id).collect();
        assert_eq!(
            ids.len(),
            shards as usize,
            "{name}: each shard once: {c:#?}"
        );
        assert_eq!(
            ids.iter().collect::<BTreeSet<_>>().len(),
            shards as usize,
            "{name}: {c:#?}"
        );
    }

    // A restore into a 2-node cluster brings every point back.
    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {{name: vectors-staging, namespace: {NS}}}\n\
         spec:\n  replicas: 2\n  version: v1.18.3\n  cluster: {{enabled: true}}\n  persistence: {{size: 1Gi}}\n\
         \x20 apiKey: {{secretRef: {{name: qdrant-api-key, key: api-key}}}}\n"
    ));
    eventually(
        240,
        "QdrantCluster vectors-staging Running",
        &diag,
        || async {
            let st = clusters.get("vectors-staging").await.ok()?.status?;
            (st.phase == Some(ClusterPhase::Running) && st.ready_replicas == 2).then_some(())
        },
    )
    .await;
    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantRestore\nmetadata: {{name: restore-all, namespace: {NS}}}\n\
         spec:\n  backupRef: {{name: before-migration}}\n  targetClusterRef: {{name: vectors-staging}}\n"
    ));
    let restores: Api<QdrantRestore> = Api::namespaced(w.admin.clone(), NS);
    eventually(
        240,
        "QdrantRestore restore-all Completed",
        &diag,
        || async {
            let r = restores.get("restore-all").await.ok()?;
            let phase = r.status.as_ref()?.phase?;
            assert_ne!(
                phase,
                OperationPhase::Failed,
                "restore failed: {:#?}",
                r.status
            );
            (phase == OperationPhase::Completed).then_some(())
        },
    )
    .await;
    let staging_ip = kubelet.pod_ip("vectors-staging-0").await.unwrap();
    let target = format!("http://{staging_ip}:6333");
    for (name, shards, rf) in COLLECTIONS {
        let want = need(all_points(&source, name, Some(API_KEY)));
        assert_eq!(want.len() as u64, POINTS);
        let got = need(all_points(&target, name, Some(API_KEY)));
        assert_eq!(got, want, "{name}: restored points differ");
        let info = need(call(
            "GET",
            &target,
            &format!("/collections/{name}"),
            Some(API_KEY),
            None,
        ));
        let params = &info["config"]["params"];
        assert_eq!(params["shard_number"], json!(shards), "{name}: {info}");
        assert_eq!(params["replication_factor"], json!(rf), "{name}: {info}");
        let placement = need(call(
            "GET",
            &target,
            &format!("/collections/{name}/cluster"),
            Some(API_KEY),
            None,
        ));
        let states: Vec<Value> = placement["local_shards"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(placement["remote_shards"].as_array().into_iter().flatten())
            .map(|s| s["state"].clone())
            .collect();
        assert!(
            states.iter().all(|s| s == "Active"),
            "{name}: every replica Active: {placement}"
        );
    }
    let aliases = need(call("GET", &target, "/aliases", Some(API_KEY), None));
    assert!(
        aliases["aliases"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["alias_name"] == "docs-current" && a["collection_name"] == "docs"),
        "alias back: {aliases}"
    );

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
