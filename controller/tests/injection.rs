//! The sidecar injection webhook through the real admission chain of a real
//! API server: registered by URL on loopback with the operator's CA, it
//! adds the agent to the labelled pods the real StatefulSet controller
//! creates, leaves other pods alone, and never blocks a pod when it is down.

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;
use qdrant_operator::crd::{QdrantBackupStatus, QdrantRestoreStatus};
use serde_json::json;
use test_support::control_plane::OPERATOR_NS;
use test_support::real_qdrant::{all_points, call};
use test_support::s3_server::S3Server;
use test_support::stack::{World, eventually, need};

const NS: &str = "vectors";

/// A StatefulSet shaped as Qdrant's Helm chart renders it: container
/// `qdrant` started by the chart's `initialize.sh` with its
/// `production.yaml` (both from a ConfigMap, by subPath), the snapshots
/// volume at /qdrant/snapshots, uid 1000, the API key from a Secret in the
/// environment, `/readyz` readiness; `labelled` sets the chart's
/// `podLabels` that ask for the agent.
fn chart_statefulset(name: &str, labelled: bool) -> String {
    let opt_in = if labelled {
        ", qdrant.io/backup-agent: \"true\""
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {NS}}}\ndata:\n\
         \x20 initialize.sh: |\n    #!/bin/bash\n    exec ./entrypoint.sh\n\
         \x20 production.yaml: |\n    storage:\n      storage_path: /qdrant/storage\n      snapshots_path: /qdrant/snapshots\n\
         ---\n\
         apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: {name}, namespace: {NS}}}\n\
         spec:\n  replicas: 1\n  serviceName: {name}-headless\n  podManagementPolicy: Parallel\n\
         \x20 selector: {{matchLabels: {{app.kubernetes.io/name: qdrant, app.kubernetes.io/instance: {name}}}}}\n\
         \x20 template:\n    metadata:\n      labels: {{app.kubernetes.io/name: qdrant, app.kubernetes.io/instance: {name}{opt_in}}}\n\
         \x20   spec:\n      securityContext: {{fsGroup: 3000}}\n      containers:\n\
         \x20     - name: qdrant\n        image: qdrant/qdrant:v1.18.3\n        command: [/bin/bash, -c]\n        args: [./config/initialize.sh]\n\
         \x20       env: [{{name: QDRANT__SERVICE__API_KEY, valueFrom: {{secretKeyRef: {{name: qdrant-apikey, key: api-key}}}}}}]\n\
         \x20       ports: [{{name: http, containerPort: 6333}}, {{name: grpc, containerPort: 6334}}, {{name: p2p, containerPort: 6335}}]\n\
         \x20       readinessProbe: {{httpGet: {{path: /readyz, port: 6333}}, periodSeconds: 1}}\n\
         \x20       securityContext: {{runAsUser: 1000, runAsGroup: 2000, runAsNonRoot: true, readOnlyRootFilesystem: true}}\n\
         \x20       volumeMounts:\n\
         \x20       - {{name: qdrant-storage, mountPath: /qdrant/storage}}\n\
         \x20       - {{name: qdrant-config, mountPath: /qdrant/config/initialize.sh, subPath: initialize.sh}}\n\
         \x20       - {{name: qdrant-config, mountPath: /qdrant/config/production.yaml, subPath: production.yaml}}\n\
         \x20       - {{name: qdrant-snapshots, mountPath: /qdrant/snapshots}}\n\
         \x20     volumes:\n\
         \x20     - {{name: qdrant-config, configMap: {{name: {name}, defaultMode: 493}}}}\n\
         \x20     - {{name: qdrant-snapshots, emptyDir: {{}}}}\n\
         \x20 volumeClaimTemplates:\n  - metadata: {{name: qdrant-storage}}\n    spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}\n"
    )
}

fn webhook_config(port: u16, ca_bundle: &str) -> String {
    format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\n\
         metadata: {{name: qdrant-operator-test}}\nwebhooks:\n\
         - name: agent.qdrant.io\n  admissionReviewVersions: [v1]\n  sideEffects: NoneOnDryRun\n\
         \x20 failurePolicy: Ignore\n  timeoutSeconds: 10\n  reinvocationPolicy: Never\n\
         \x20 objectSelector: {{matchLabels: {{qdrant.io/backup-agent: \"true\"}}}}\n\
         \x20 rules: [{{apiGroups: [\"\"], apiVersions: [v1], operations: [CREATE], resources: [pods], scope: Namespaced}}]\n\
         \x20 clientConfig: {{url: \"https://127.0.0.1:{port}/mutate-pods\", caBundle: {ca_bundle}}}\n"
    )
}

async fn pod(pods: &Api<Pod>, name: &str, diag: &impl Fn() -> String) -> Pod {
    eventually(60, &format!("pod {name} is created"), diag, || async {
        pods.get_opt(name).await.ok().flatten()
    })
    .await
}

fn containers(p: &Pod) -> Vec<String> {
    p.spec
        .iter()
        .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_qdrant_pods_get_the_agent_and_a_down_webhook_blocks_nothing() {
    let w = World::start().await;
    let port = test_support::s3_server::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let operator = w.operator_with(
        "qdrant-operator-0",
        &["--webhook-listen", &listen, "--webhook-hosts", "127.0.0.1"],
    );
    let log = operator.log.clone();
    let kubelet = w.kubelet(NS);
    let diag = || {
        format!(
            "operator log:\n{}\npods:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            kubelet.all_logs()
        )
    };
    // The operator's CA, which signs the webhook's certificate.
    let secrets: Api<Secret> = Api::namespaced(w.admin.clone(), OPERATOR_NS);
    let ca = eventually(60, "the operator created its CA", &diag, || async {
        let s = secrets.get_opt("qdrant-operator-ca").await.ok()??;
        s.data?.get("ca.crt").map(|b| b.0.clone())
    })
    .await;
    let bundle = qdrant_operator::webhook::base64(&ca);
    w.apply(&webhook_config(port, &bundle));
    w.kubectl(&["create", "namespace", NS]);
    w.secret(NS, "qdrant-apikey", &[("api-key", KEY)]);

    let pods: Api<Pod> = Api::namespaced(w.admin.clone(), NS);
    let ns_secrets: Api<Secret> = Api::namespaced(w.admin.clone(), NS);
    w.apply(&chart_statefulset("qdrant", true));
    let p = pod(&pods, "qdrant-0", &diag).await;
    assert_eq!(containers(&p), ["qdrant", "qdrant-agent"], "{}", diag());
    let spec = p.spec.unwrap();
    let agent = spec
        .containers
        .iter()
        .find(|c| c.name == "qdrant-agent")
        .unwrap();
    let key = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "QDRANT__SERVICE__API_KEY")
        .and_then(|e| e.value_from.as_ref()?.secret_key_ref.clone())
        .expect("the API key from Qdrant's own Secret");
    assert_eq!(key.name, "qdrant-apikey");
    assert!(
        agent
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "qdrant-snapshots" && m.mount_path == "/qdrant/snapshots")
    );
    // The workload's Secrets exist, owned by its StatefulSet: deleting it
    // deletes them.
    for name in ["qdrant-agent-token", "qdrant-agent-tls"] {
        let s = ns_secrets.get(name).await.unwrap();
        let owner = &s.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("StatefulSet", "qdrant")
        );
    }

    // The pod runs: the real Qdrant and the injected agent, both Ready. The
    // agent answers the operator's client certificate and the workload's
    // token, over TLS for the pod's name under the StatefulSet's Service,
    // and reads Qdrant with Qdrant's own key.
    let ip = ready_ip(&pods, &kubelet, "qdrant-0", &diag).await;
    let base = format!("http://{ip}:6333");
    fill(&base, "docs", 240);
    let ca_secret = secrets
        .get("qdrant-operator-ca")
        .await
        .unwrap()
        .data
        .unwrap();
    let pem = |k: &str| String::from_utf8(ca_secret[k].0.clone()).unwrap();
    let ca = qdrant_operator::pki::Ca::load(&pem("ca.crt"), &pem("ca.key")).unwrap();
    let tls = qdrant_operator::agent_client::ClientIdentity::issue(std::sync::Arc::new(ca))
        .unwrap()
        .get();
    let token = ns_secrets
        .get("qdrant-agent-token")
        .await
        .unwrap()
        .data
        .unwrap()["token"]
        .0
        .clone();
    let mut agent = qdrant_operator::agent_client::connect(
        &format!("{ip}:{}", qdrant_operator::inject::PORT),
        &format!("qdrant-0.qdrant-headless.{NS}.svc"),
        &tls,
        Some(String::from_utf8(token).unwrap().trim()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", diag()));
    let placement = agent
        .get_placement(qdrant_agent_proto::v1::GetPlacementRequest {
            collections: vec![],
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", diag()))
        .into_inner();
    assert!(
        format!("{placement:?}").contains("\"docs\""),
        "{placement:?}"
    );

    // A second installation of the operator (another namespace, its own
    // CA) renews no certificate the first one's webhook issued: its agents
    // would then refuse the first installation.
    let cert = || async {
        ns_secrets
            .get("qdrant-agent-tls")
            .await
            .unwrap()
            .data
            .unwrap()["tls.crt"]
            .0
            .clone()
    };
    let before_second = cert().await;
    w.kubectl(&["create", "namespace", "second-operator"]);
    let mut second = w.operator_in(
        "second-operator",
        "second-operator-0",
        &["--no-leader-election"],
    );
    eventually(60, "the second installation runs", &diag, || async {
        second.log_text().contains("reconciling").then_some(())
    })
    .await;
    // Its look at the agents' certificates runs as it starts.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert!(
        cert().await == before_second,
        "the second installation re-issued the injected workload's certificate:\n{}",
        second.log_text()
    );
    second.process().stop();

    // QdrantBackup and QdrantRestore take the StatefulSet as their
    // cluster: a backup of it (read back and checked), restored into it
    // under another name, gives back every point.
    let s3 = need(S3Server::start());
    let bucket = need(s3.bucket("chart"));
    w.secret(
        NS,
        "s3",
        &[
            ("AWS_ACCESS_KEY_ID", "AKIACHART"),
            ("AWS_SECRET_ACCESS_KEY", "chart-secret-Pq7"),
        ],
    );
    // `helm test` leaves a pod with the chart's labels that is not the
    // StatefulSet's: it is not one of the Qdrant pods to back up.
    w.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: qdrant-test-db-interaction, namespace: {NS}, \
         labels: {{app.kubernetes.io/name: qdrant, app.kubernetes.io/instance: qdrant}}}}\n\
         spec: {{restartPolicy: Never, containers: [{{name: test-script, image: \"registry.suse.com/bci/python:3.11\"}}]}}\n"
    ));
    w.apply(&backup_yaml(
        "chart-backup",
        "qdrant",
        &bucket,
        &s3.endpoint,
    ));
    let done: QdrantBackupStatus = w
        .completed(NS, "qdrantbackups", "chart-backup", 180, &diag)
        .await;
    assert_eq!(
        done.s3_path.as_deref(),
        Some(format!("s3://{bucket}/chart/{NS}/qdrant/chart-backup").as_str())
    );
    assert!(done.verification.is_some(), "{done:?}");
    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantRestore\nmetadata: {{name: chart-restore, namespace: {NS}}}\n\
         spec:\n  backupRef: {{name: chart-backup}}\n  targetClusterRef: {{kind: StatefulSet, name: qdrant}}\n\
         \x20 collectionMapping: {{docs: docs-restored}}\n"
    ));
    let _: QdrantRestoreStatus = w
        .completed(NS, "qdrantrestores", "chart-restore", 180, &diag)
        .await;
    let original = need(all_points(&base, "docs", Some(KEY)));
    assert_eq!(original.len(), 240);
    assert_eq!(
        need(all_points(&base, "docs-restored", Some(KEY))),
        original
    );

    // Without the label, nothing is injected, and a backup of it says how
    // to ask for the agent.
    w.apply(&chart_statefulset("plain", false));
    let p = pod(&pods, "plain-0", &diag).await;
    assert_eq!(containers(&p), ["qdrant"]);
    w.apply(&backup_yaml("plain-backup", "plain", &bucket, &s3.endpoint));
    let failed = w
        .ended(NS, "qdrantbackups", "plain-backup", 60, &diag)
        .await;
    let ready = &failed["status"]["conditions"][0];
    assert_eq!(ready["reason"], "AgentNotInjected", "{failed:#}");
    assert!(
        failed["status"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("label its pod template qdrant.io/backup-agent: \"true\"")),
        "{failed:#}"
    );

    // A labelled pod the agent cannot serve (no snapshots directory) is
    // admitted without it, and a backup says why, as the webhook recorded.
    let no_snapshots = chart_statefulset("nosnap", true).replace(
        "        - {name: qdrant-snapshots, mountPath: /qdrant/snapshots}\n",
        "",
    );
    w.apply(&no_snapshots);
    let p = pod(&pods, "nosnap-0", &diag).await;
    assert_eq!(containers(&p), ["qdrant"]);
    ready_ip(&pods, &kubelet, "nosnap-0", &diag).await;
    w.apply(&backup_yaml(
        "nosnap-backup",
        "nosnap",
        &bucket,
        &s3.endpoint,
    ));
    let api: Api<qdrant_operator::crd::QdrantBackup> = Api::namespaced(w.admin.clone(), NS);
    eventually(
        60,
        "the backup says why nosnap-0 has no agent",
        &diag,
        || async {
            let c = api.get("nosnap-backup").await.ok()?.status?.conditions;
            let c = c.into_iter().next()?;
            (c.reason == "AgentMissing"
                && c.message.contains(
                    "did not add it because no container mounts Qdrant's snapshots directory",
                ))
            .then_some(())
        },
    )
    .await;

    // With the operator down, labelled pods are still created (without the
    // agent): failurePolicy Ignore.
    drop(operator);
    w.apply(&chart_statefulset("later", true));
    let p = pod(&pods, "later-0", &diag).await;
    assert_eq!(containers(&p), ["qdrant"]);
    let later = ready_ip(&pods, &kubelet, "later-0", &diag).await;
    fill(&format!("http://{later}:6333"), "notes", 50);

    // Once the operator is back, a backup of that StatefulSet waits and
    // names the pod without the agent and the command that fixes it;
    // running that command is enough for the backup to complete.
    let operator = w.operator_with(
        "qdrant-operator-0",
        &["--webhook-listen", &listen, "--webhook-hosts", "127.0.0.1"],
    );
    let log = operator.log.clone();
    let diag = || {
        format!(
            "operator log:\n{}\npods:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            kubelet.all_logs()
        )
    };
    w.apply(&backup_yaml("later-backup", "later", &bucket, &s3.endpoint));
    let fix = format!("kubectl delete pod -n {NS} later-0");
    let seen = std::sync::Mutex::new(String::new());
    let diag_seen = || format!("last status: {}\n{}", seen.lock().unwrap(), diag());
    eventually(
        60,
        "the backup names the pod without its agent",
        diag_seen,
        || async {
            let b = api.get("later-backup").await.ok()?;
            *seen.lock().unwrap() = format!("{:?}", b.status);
            let c = b.status?.conditions.into_iter().next()?;
            (c.reason == "AgentMissing" && c.message.contains(&fix)).then_some(())
        },
    )
    .await;
    // `kubectl get qb` shows the wait.
    let table = w.kubectl(&["-n", NS, "get", "qb", "later-backup"]);
    assert!(
        table.lines().next().is_some_and(|h| h.contains("REASON"))
            && table.contains("AgentMissing"),
        "{table}"
    );
    let args: Vec<&str> = fix.split(' ').skip(1).collect();
    w.kubectl(&args);
    let done: QdrantBackupStatus = w
        .completed(NS, "qdrantbackups", "later-backup", 180, &diag)
        .await;
    assert_eq!(done.collections.len(), 1, "{done:?}");
    let p = pods.get("later-0").await.unwrap();
    assert_eq!(containers(&p), ["qdrant", "qdrant-agent"]);
}

const KEY: &str = "chart-api-key-3c1d";

/// `n` points in a new collection `name` of the Qdrant at `base`.
fn fill(base: &str, name: &str, n: u64) {
    need(call(
        "PUT",
        base,
        &format!("/collections/{name}?wait=true"),
        Some(KEY),
        Some(json!({"vectors": {"size": 4, "distance": "Dot"}})),
    ));
    let points: Vec<_> = (1..=n)
        .map(|i| json!({"id": i, "vector": [i as f32, 1.0, -2.0, 0.5], "payload": {"n": i}}))
        .collect();
    need(call(
        "PUT",
        base,
        &format!("/collections/{name}/points?wait=true"),
        Some(KEY),
        Some(json!({"points": points})),
    ));
}

/// A QdrantBackup of StatefulSet `sts`, read back after it is written.
fn backup_yaml(name: &str, sts: &str, bucket: &str, endpoint: &str) -> String {
    format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {{name: {name}, namespace: {NS}}}\n\
         spec:\n  clusterRef: {{kind: StatefulSet, name: {sts}}}\n  verify: true\n  storage:\n    s3: {{bucket: {bucket}, prefix: chart, region: us-east-1, \
         endpoint: \"{endpoint}\", credentialsSecretRef: {{name: s3}}}}\n"
    )
}

/// Waits until pod `name` is Ready; its address.
async fn ready_ip(
    pods: &Api<Pod>,
    kubelet: &test_support::kubelet::Kubelet,
    name: &str,
    diag: &impl Fn() -> String,
) -> String {
    eventually(120, &format!("{name} Ready"), diag, || async {
        let st = pods.get(name).await.ok()?.status?;
        st.conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;
    kubelet.pod_ip(name).await.unwrap()
}
