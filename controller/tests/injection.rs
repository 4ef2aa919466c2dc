//! The sidecar injection webhook through the real admission chain of a real
//! API server: registered by URL on loopback with the operator's CA, it
//! adds the agent to the labelled pods the real StatefulSet controller
//! creates, leaves other pods alone, and never blocks a pod when it is down.

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;
use test_support::control_plane::OPERATOR_NS;
use test_support::stack::{World, eventually};

const NS: &str = "vectors";

/// A StatefulSet shaped as Qdrant's Helm chart renders it: container
/// `qdrant`, the snapshots volume at /qdrant/snapshots, uid 1000, the API
/// key from a Secret in the environment; `labelled` sets the chart's
/// `podLabels` that ask for the agent.
fn chart_statefulset(name: &str, labelled: bool) -> String {
    let opt_in = if labelled {
        ", qdrant.io/backup-agent: \"true\""
    } else {
        ""
    };
    format!(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: {name}, namespace: {NS}}}\n\
         spec:\n  replicas: 1\n  serviceName: {name}-headless\n  podManagementPolicy: Parallel\n\
         \x20 selector: {{matchLabels: {{app.kubernetes.io/name: qdrant, app.kubernetes.io/instance: {name}}}}}\n\
         \x20 template:\n    metadata:\n      labels: {{app.kubernetes.io/name: qdrant, app.kubernetes.io/instance: {name}{opt_in}}}\n\
         \x20   spec:\n      securityContext: {{fsGroup: 3000}}\n      containers:\n\
         \x20     - name: qdrant\n        image: qdrant/qdrant:v1.18.3\n        command: [/bin/bash, -c]\n        args: [./config/initialize.sh]\n\
         \x20       env: [{{name: QDRANT__SERVICE__API_KEY, valueFrom: {{secretKeyRef: {{name: {name}-apikey, key: api-key}}}}}}]\n\
         \x20       ports: [{{name: http, containerPort: 6333}}, {{name: grpc, containerPort: 6334}}, {{name: p2p, containerPort: 6335}}]\n\
         \x20       securityContext: {{runAsUser: 1000, runAsGroup: 2000, runAsNonRoot: true, readOnlyRootFilesystem: true}}\n\
         \x20       volumeMounts: [{{name: qdrant-storage, mountPath: /qdrant/storage}}, {{name: qdrant-snapshots, mountPath: /qdrant/snapshots}}]\n\
         \x20     volumes: [{{name: qdrant-snapshots, emptyDir: {{}}}}]\n\
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
    let diag = || {
        format!(
            "operator log:\n{}\nkube-apiserver:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            w.cp.log_tail("kube-apiserver.log")
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
    w.secret(NS, "qdrant-apikey", &[("api-key", "chart-api-key-3c1d")]);

    let pods: Api<Pod> = Api::namespaced(w.admin.clone(), NS);
    // The webhook may take a moment to be served after its registration.
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
        .find(|e| e.name == "QDRANT_API_KEY")
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
    let ns_secrets: Api<Secret> = Api::namespaced(w.admin.clone(), NS);
    for name in ["qdrant-agent-token", "qdrant-agent-tls"] {
        let s = ns_secrets.get(name).await.unwrap();
        let owner = &s.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("StatefulSet", "qdrant")
        );
    }

    // Without the label, nothing is injected.
    w.apply(&chart_statefulset("plain", false));
    let p = pod(&pods, "plain-0", &diag).await;
    assert_eq!(containers(&p), ["qdrant"]);

    // With the operator down, labelled pods are still created (without the
    // agent): failurePolicy Ignore.
    drop(operator);
    w.apply(&chart_statefulset("later", true));
    let p = pod(&pods, "later-0", &diag).await;
    assert_eq!(containers(&p), ["qdrant"]);
}
