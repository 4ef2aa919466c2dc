//! No tenant can hold up another: on the real kube-apiserver and
//! kube-controller-manager, the `qdrant-operator` binary as its own
//! ServiceAccount, and a test kubelet per namespace running the real Qdrant
//! 1.18.3 and the real agent. Tenant A's agent hangs (its process is
//! stopped: the kernel still accepts connections, nothing answers), and A
//! points a restore at a bucket path holding a manifest no agent wrote;
//! tenant B's backup still starts at once and completes, A's refusal says
//! why, and A's backups complete once its agent answers again.

use qdrant_operator::crd::{OperationPhase, QdrantBackup, QdrantBackupStatus};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use test_support::real_qdrant::call;
use test_support::s3_server::S3Server;
use test_support::stack::{World, cluster_yaml, eventually, need};

const A: &str = "tenant-a";
const B: &str = "tenant-b";
const API_KEY: &str = "tenants-api-key-71c2";

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Collection `docs` of one shard with a few points.
fn seed(base: &str) {
    need(call(
        "PUT",
        base,
        "/collections/docs?wait=true",
        Some(API_KEY),
        Some(json!({"vectors": {"size": 4, "distance": "Cosine"}})),
    ));
    let points: Vec<Value> = (1..=50)
        .map(|i| json!({"id": i, "vector": [i as f32, 1.0, 0.5, -1.0]}))
        .collect();
    need(call(
        "PUT",
        base,
        "/collections/docs/points?wait=true",
        Some(API_KEY),
        Some(json!({"points": points})),
    ));
}

fn storage(bucket: &str, endpoint: &str) -> String {
    format!(
        "storage: {{s3: {{bucket: {bucket}, prefix: t, region: us-east-1, endpoint: \"{endpoint}\", credentialsSecretRef: {{name: s3}}}}}}"
    )
}

fn backup_yaml(ns: &str, name: &str, bucket: &str, endpoint: &str) -> String {
    format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{clusterRef: {{name: vectors}}, {}}}\n",
        storage(bucket, endpoint)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_agents_hang_or_lie_holds_up_no_other_tenant() {
    let w = World::start().await;
    let operator = w.operator("qdrant-operator-0");
    let operator_log = operator.log.clone();
    let s3 = need(S3Server::start());
    let bucket = need(s3.bucket("tenants"));
    let mut kubelets = Vec::new();
    for ns in [A, B] {
        w.kubectl(&["create", "namespace", ns]);
        w.secret(ns, "qdrant-api-key", &[("api-key", API_KEY)]);
        w.secret(
            ns,
            "s3",
            &[
                ("AWS_ACCESS_KEY_ID", "AKIATENANT"),
                ("AWS_SECRET_ACCESS_KEY", "tenant-secret"),
            ],
        );
        kubelets.push(w.kubelet(ns));
        w.apply(&cluster_yaml(ns, "vectors", 1));
    }
    let diag = || {
        let objects = w.kubectl(&["get", "qc,qb,qr,pods", "-A", "-o", "wide"]);
        let statuses = w.kubectl(&[
            "get",
            "qb,qr",
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}: {.status}{\"\\n\"}{end}",
        ]);
        format!(
            "operator log:\n{}\nobjects:\n{objects}\nstatuses:\n{statuses}\npods (last lines):\n{}",
            tail(
                &std::fs::read_to_string(&operator_log).unwrap_or_default(),
                40
            ),
            kubelets
                .iter()
                .map(|k| tail(&k.all_logs(), 15))
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    for (ns, kubelet) in [A, B].iter().zip(&kubelets) {
        w.running(ns, "vectors", 1, 180, &diag).await;
        seed(&format!(
            "http://{}:6333",
            kubelet.pod_ip("vectors-0").await.unwrap()
        ));
    }

    // A manifest no agent wrote, larger than any agent writes, at a bucket
    // path tenant A restores from: refused unread, with the reason.
    let store = {
        let cfg = qdrant_agent::store::S3Config {
            endpoint: Some(s3.endpoint.clone()),
            region: Some("us-east-1".into()),
            static_credentials: Some(("test".into(), "test".into(), None)),
            ..Default::default()
        };
        qdrant_agent::store::S3Store::new(bucket.clone(), &cfg)
            .await
            .unwrap()
    };
    let huge = qdrant_agent::manifest::MAX_MANIFEST_BYTES as usize + 1;
    qdrant_agent::store::ObjectStore::put(
        &store,
        "foreign/huge/manifest.json",
        vec![b' '; huge].into(),
    )
    .await
    .unwrap();
    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantRestore\nmetadata: {{name: from-foreign, namespace: {A}}}\n\
         spec:\n  targetClusterRef: {{name: vectors}}\n  source:\n    s3: {{bucket: {bucket}, region: us-east-1, \
         endpoint: \"{}\", credentialsSecretRef: {{name: s3}}, path: foreign/huge}}\n",
        s3.endpoint
    ));
    let failed = w
        .ended(A, "qdrantrestores", "from-foreign", 120, &diag)
        .await;
    assert_eq!(
        failed["status"]["phase"], "Failed",
        "{:#}",
        failed["status"]
    );
    let error = failed["status"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("foreign/huge/manifest.json") && error.contains("refused unread"),
        "{error}"
    );

    // Tenant A's agent hangs, with backups of A in flight.
    let agent = qdrant_operator::cluster::render::AGENT_CONTAINER;
    assert_eq!(
        kubelets[0].freeze_container("vectors-0", agent, true).await,
        1
    );
    for name in ["a-first", "a-second"] {
        w.apply(&backup_yaml(A, name, &bucket, &s3.endpoint));
    }
    let backups_a: kube::Api<QdrantBackup> = kube::Api::namespaced(w.admin.clone(), A);
    // Let the operator take A's backups up and block on the hung agent.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Tenant B's backup starts at once and completes.
    let asked = Instant::now();
    w.apply(&backup_yaml(B, "b-backup", &bucket, &s3.endpoint));
    let backups_b: kube::Api<QdrantBackup> = kube::Api::namespaced(w.admin.clone(), B);
    eventually(
        30,
        "tenant B's backup starts within 30 s",
        &diag,
        || async {
            let st = backups_b.get("b-backup").await.ok()?.status?;
            matches!(
                st.phase,
                Some(OperationPhase::InProgress | OperationPhase::Completed)
            )
            .then_some(())
        },
    )
    .await;
    let started = asked.elapsed();
    let done = w
        .completed::<QdrantBackupStatus>(B, "qdrantbackups", "b-backup", 120, &diag)
        .await;
    assert!(done.size_bytes.unwrap_or(0) > 0, "{done:#?}");
    eprintln!("tenant B's backup started {started:?} after it was asked for, while A's agent hung");

    // A's backups say what they wait for, and nothing of them is lost: once
    // the agent answers again they complete, one after the other.
    let reason = |b: &QdrantBackup| {
        let c = b
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")?;
        Some((c.reason.clone(), c.message.clone()))
    };
    let (_, message) = eventually(
        60,
        "a-first says its agent does not answer",
        &diag,
        || async {
            reason(&backups_a.get("a-first").await.ok()?).filter(|(r, _)| r == "AgentUnreachable")
        },
    )
    .await;
    assert!(message.contains("agent of pod vectors-0"), "{message}");
    let second = backups_a.get("a-second").await.unwrap();
    assert_eq!(
        reason(&second).map(|r| r.0).as_deref(),
        Some("WaitingForBackup")
    );
    let first = backups_a.get("a-first").await.unwrap();
    assert_ne!(
        first.status.as_ref().and_then(|s| s.phase),
        Some(OperationPhase::Completed),
        "a backup completed through a hung agent"
    );
    kubelets[0]
        .freeze_container("vectors-0", agent, false)
        .await;
    for name in ["a-first", "a-second"] {
        w.completed::<QdrantBackupStatus>(A, "qdrantbackups", name, 240, &diag)
            .await;
    }
}
