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
use test_support::control_plane::OPERATOR_NS;
use test_support::node::{self, Node};
use test_support::real_qdrant::{all_points, call, seed_collection};
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
fn diagnosis(w: &World, node: &Node) -> String {
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
        "operator log:\n{}\noperator pods:\n{}\nobjects:\n{}\nbackups and restores:\n{}\nevents:\n{}\npod logs:\n{logs}\nkubelet:\n{}",
        tail(
            &out(&[
                "-n",
                OPERATOR_NS,
                "logs",
                "deploy/qdrant-operator",
                "--tail=30"
            ]),
            30
        ),
        out(&["-n", OPERATOR_NS, "get", "pods", "-o", "wide"]),
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

/// The operator as `kubectl apply -k manifests/` installed it (the World
/// did): its Deployment runs the image built from Dockerfile.controller on
/// the node, as its ServiceAccount. Two settings differ, both for this
/// test environment: the API server's address (no kube-proxy routes the
/// `kubernetes` Service's ClusterIP) and plain-http endpoints allowed (the
/// test S3 server).
async fn in_cluster_operator(w: &World, env: &[&str], diag: &impl Fn() -> String) {
    w.apply(&Node::namespace_yaml(&w.cp, OPERATOR_NS));
    w.apply(&Node::namespace_yaml(&w.cp, NS));
    let port = w.cp.url.rsplit(':').next().unwrap().to_string();
    let (host, port) = (
        format!("KUBERNETES_SERVICE_HOST={}", node::GATEWAY),
        format!("KUBERNETES_SERVICE_PORT={port}"),
    );
    let mut args = vec![
        "-n",
        OPERATOR_NS,
        "set",
        "env",
        "deployment/qdrant-operator",
        "ALLOW_INSECURE_ENDPOINTS=true",
        &host,
        &port,
    ];
    args.extend_from_slice(env);
    w.kubectl(&args);
    let out = need(w.cp.kubectl(&[
        "-n",
        OPERATOR_NS,
        "rollout",
        "status",
        "deployment/qdrant-operator",
        "--timeout=180s",
    ]));
    assert!(
        out.status.success(),
        "the operator's Deployment did not roll out: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        diag()
    );
}

fn seed(base: &str, key: &str) {
    for (name, shards, rf) in COLLECTIONS {
        need(seed_collection(base, Some(key), name, shards, rf, POINTS));
    }
}

/// A QdrantBackup `name` of `cluster_ref` (a flow mapping) into the test
/// bucket under `prefix`, with `extra` spec lines.
fn backup_yaml(
    name: &str,
    cluster_ref: &str,
    s3: &S3Server,
    bucket: &str,
    prefix: &str,
    extra: &str,
) -> String {
    format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {{name: {name}, namespace: {NS}}}\n\
         spec:\n  clusterRef: {cluster_ref}\n{extra}  storage:\n    s3: {{bucket: {bucket}, prefix: {prefix}, region: us-east-1, \
         endpoint: \"{}\", credentialsSecretRef: {{name: s3}}}}\n",
        s3.endpoint
    )
}

/// Backs `cluster_ref` (a flow mapping) up as `name` under `prefix`, and
/// waits until the backup has Completed.
async fn back_up(
    w: &World,
    s3: &S3Server,
    bucket: &str,
    name: &str,
    cluster_ref: &str,
    prefix: &str,
    diag: &impl Fn() -> String,
) {
    w.apply(&backup_yaml(name, cluster_ref, s3, bucket, prefix, ""));
    let _ = w
        .completed::<Value>(NS, "qdrantbackups", name, 300, diag)
        .await;
}

/// What every scenario starts from: a control plane and a real node with
/// the images, S3 on the bridge with a bucket and its credentials Secret
/// `s3` in NS, and the operator running in the cluster (with `env` set on
/// its Deployment).
async fn start(tag: &str, env: &[&str]) -> (World, Node, S3Server, String) {
    let images = need(node::image_archives());
    let w = World::start_for_node().await;
    let node = need(Node::start(&w.cp, &images).await);
    let s3 = need(S3Server::start_on(node::GATEWAY));
    let bucket = need(s3.bucket(tag));
    in_cluster_operator(&w, env, &|| diagnosis(&w, &node)).await;
    w.secret(
        NS,
        "s3",
        &[
            ("AWS_ACCESS_KEY_ID", "AKIANODE"),
            ("AWS_SECRET_ACCESS_KEY", "node-secret-Hh52"),
        ],
    );
    (w, node, s3, bucket)
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
    let (w, node, s3, bucket) = start("node", &[]).await;
    let diag = || diagnosis(&w, &node);
    w.secret(NS, "qdrant-api-key", &[("api-key", API_KEY)]);
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
    seed(&source, API_KEY);

    back_up(
        &w,
        &s3,
        &bucket,
        "nightly",
        "{name: vectors}",
        "node",
        &diag,
    )
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

/// Qdrant's official chart (`../shared/charts/qdrant`, unmodified) installed
/// as `release` with `values`, as its users install it.
fn helm_install(w: &World, release: &str, values: &str) {
    helm(w, "install", release, values, &[]);
}

fn helm(w: &World, verb: &str, release: &str, values: &str, extra: &[&str]) {
    let chart = test_support::bins::workspace_root()
        .parent()
        .unwrap()
        .join("shared/charts/qdrant");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), values).unwrap();
    let chart = chart.display().to_string();
    let values = file.path().display().to_string();
    let mut args = vec![verb, release, &chart, "-n", NS, "-f", &values];
    args.extend_from_slice(extra);
    let out = need(test_support::bins::helm(
        &args,
        Some(&w.cp.admin_kubeconfig()),
    ));
    assert!(
        out.status.success(),
        "helm {verb} {release}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pod `helm test <release>` creates from the chart's
/// `templates/tests/`: it carries the chart's selector labels, and its image
/// cannot be pulled here, so it stays unready beside the StatefulSet's pods.
fn helm_test_pod(w: &World, release: &str, values: &str) {
    let chart = test_support::bins::workspace_root()
        .parent()
        .unwrap()
        .join("shared/charts/qdrant");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), values).unwrap();
    let out = need(test_support::bins::helm(
        &[
            "template",
            release,
            &chart.display().to_string(),
            "-n",
            NS,
            "-f",
            &file.path().display().to_string(),
        ],
        None,
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    let pod = text
        .split("\n---\n")
        .find(|d| d.contains("# Source: qdrant/templates/tests/"))
        .expect("the chart has a test pod");
    let pod = pod.replacen("metadata:\n", &format!("metadata:\n  namespace: {NS}\n"), 1);
    w.apply(&pod);
}

/// The chart's values as a user opting into backups writes them: its
/// defaults (uid 1000, gid 2000, fsGroup 3000, read-only root filesystem,
/// a generated API key mounted as `config/local.yaml`), plus the opt-in label.
fn chart_values(replicas: u32) -> String {
    format!(
        "replicaCount: {replicas}\nimage: {{tag: v1.18.3}}\napiKey: true\n\
         podLabels: {{qdrant.io/backup-agent: \"true\"}}\npersistence: {{size: 1Gi}}\n"
    )
}

/// The API key the chart generated for `release`.
async fn chart_api_key(w: &World, release: &str) -> String {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(w.admin.clone(), NS);
    let s = secrets
        .get(&format!("{release}-qdrant-apikey"))
        .await
        .expect("the chart's API key Secret");
    let key = s
        .data
        .unwrap_or_default()
        .remove("api-key")
        .expect("api-key");
    String::from_utf8(key.0).unwrap()
}

/// The UIDs of the StatefulSet pods of Helm release `release`.
async fn pod_uids(pods: &Api<Pod>, release: &str) -> Vec<String> {
    let lp =
        kube::api::ListParams::default().labels(&format!("app.kubernetes.io/instance={release}"));
    pods.list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        // Not the `helm test` pod, which carries the same labels.
        .filter(|p| {
            p.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "StatefulSet")
        })
        .filter_map(|p| p.metadata.uid)
        .collect()
}

async fn statefulset_ready(w: &World, name: &str, n: i32, diag: &impl Fn() -> String) {
    let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(w.admin.clone(), NS);
    test_support::stack::eventually(
        300,
        &format!("StatefulSet {name} has {n} ready pods"),
        diag,
        || async {
            let s = sts.get_opt(name).await.ok()??;
            (s.status?.ready_replicas == Some(n)).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrants_official_chart_gets_the_agent_and_is_backed_up_and_restored() {
    // The webhook as manifests/ installs it: the API server calls the
    // operator's pod through its Service.
    let (w, node, s3, bucket) = start("chart", &[]).await;
    let diag = || diagnosis(&w, &node);
    w.apply(&node.local_volumes("chart", 6, "1Gi"));
    helm_install(&w, "vectors", &chart_values(3));
    statefulset_ready(&w, "vectors-qdrant", 3, &diag).await;
    helm_test_pod(&w, "vectors", &chart_values(3));

    let pods: Api<Pod> = Api::namespaced(w.admin.clone(), NS);
    let p = pods.get("vectors-qdrant-0").await.unwrap();
    let names: Vec<String> = p
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
        .collect();
    assert!(names.contains(&"qdrant-agent".to_string()), "{names:?}");
    let key = chart_api_key(&w, "vectors").await;
    let source = format!("http://{}:6333", pod_ip(&pods, "vectors-qdrant-0").await);
    seed(&source, &key);

    back_up(
        &w,
        &s3,
        &bucket,
        "chart",
        "{kind: StatefulSet, name: vectors-qdrant}",
        "chart",
        &diag,
    )
    .await;
    // ... with the `helm test` pod there all along, matching the
    // StatefulSet's selector and never ready.
    let test_pod = pods
        .get("vectors-qdrant-test-db-interaction")
        .await
        .expect("the helm test pod is there");
    assert!(
        !test_pod
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    // `helm upgrade` changing a value rolls every pod: each comes back
    // with the agent, and backups go on.
    let before: Vec<String> = pod_uids(&pods, "vectors").await;
    helm(
        &w,
        "upgrade",
        "vectors",
        "podAnnotations: {example.com/rolled: \"1\"}\n",
        &["--reuse-values"],
    );
    let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(w.admin.clone(), NS);
    test_support::stack::eventually(300, "the upgrade rolled every pod", &diag, || async {
        let st = sts.get("vectors-qdrant").await.ok()?.status?;
        (st.update_revision.is_some()
            && st.current_revision == st.update_revision
            && st.updated_replicas == Some(3)
            && st.ready_replicas == Some(3))
        .then_some(())
    })
    .await;
    let after = pod_uids(&pods, "vectors").await;
    assert!(
        after.iter().all(|u| !before.contains(u)),
        "every pod was replaced"
    );
    for i in 0..3 {
        let p = pods.get(&format!("vectors-qdrant-{i}")).await.unwrap();
        assert!(
            p.spec
                .iter()
                .flat_map(|s| &s.containers)
                .any(|c| c.name == "qdrant-agent"),
            "vectors-qdrant-{i} came back without the agent"
        );
    }
    back_up(
        &w,
        &s3,
        &bucket,
        "after-upgrade",
        "{kind: StatefulSet, name: vectors-qdrant}",
        "chart",
        &diag,
    )
    .await;

    // The second release sets its key in `config.service.api_key`, which
    // the chart writes into production.yaml (a ConfigMap), not local.yaml;
    // and it has no fsGroup (the chart's own default removed; `{}` would
    // keep it, as Helm merges maps), so Secret files stay root's unless the
    // webhook makes the agent's readable.
    const COPY_KEY: &str = "copy-key-in-values-8f2a";
    helm_install(
        &w,
        "copy",
        &format!(
            "replicaCount: 2\nimage: {{tag: v1.18.3}}\npodLabels: {{qdrant.io/backup-agent: \"true\"}}\n\
             persistence: {{size: 1Gi}}\nconfig: {{service: {{api_key: {COPY_KEY}}}}}\npodSecurityContext: {{fsGroup: null, fsGroupChangePolicy: null}}\n"
        ),
    );
    statefulset_ready(&w, "copy-qdrant", 2, &diag).await;
    let copy_pod = pods.get("copy-qdrant-0").await.unwrap();
    assert_eq!(
        copy_pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref())
            .and_then(|s| s.fs_group),
        None,
        "the copy runs without an fsGroup"
    );
    w.apply(&format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantRestore\nmetadata: {{name: chart-copy, namespace: {NS}}}\n\
         spec:\n  backupRef: {{name: chart}}\n  targetClusterRef: {{kind: StatefulSet, name: copy-qdrant}}\n"
    ));
    let _ = w
        .completed::<QdrantRestoreStatus>(NS, "qdrantrestores", "chart-copy", 300, &diag)
        .await;
    let copy_key = COPY_KEY.to_string();
    // The upgrade replaced the source's pods: new addresses.
    let source = format!("http://{}:6333", pod_ip(&pods, "vectors-qdrant-0").await);
    let target = format!("http://{}:6333", pod_ip(&pods, "copy-qdrant-0").await);
    for (name, _, _) in COLLECTIONS {
        let want = need(all_points(&source, name, Some(&key)));
        assert_eq!(want.len() as u64, POINTS, "{name}");
        let got = need(all_points(&target, name, Some(&copy_key)));
        assert_eq!(got, want, "{name}: restored points differ");
    }

    // ... and that release, its key only in production.yaml, is backed up.
    back_up(
        &w,
        &s3,
        &bucket,
        "copy",
        "{kind: StatefulSet, name: copy-qdrant}",
        "copy",
        &diag,
    )
    .await;

    // `config.storage.snapshots_path` elsewhere than the volume the agent
    // shares (/qdrant/snapshots): the file modes refuse at once, naming
    // both, and auto mode streams.
    helm_install(
        &w,
        "alt",
        "replicaCount: 1\nimage: {tag: v1.18.3}\napiKey: true\npodLabels: {qdrant.io/backup-agent: \"true\"}\n\
         persistence: {size: 1Gi}\nconfig: {storage: {snapshots_path: /qdrant/snapshots-alt}}\n\
         additionalVolumes: [{name: alt, emptyDir: {}}]\nadditionalVolumeMounts: [{name: alt, mountPath: /qdrant/snapshots-alt}]\n",
    );
    statefulset_ready(&w, "alt-qdrant", 1, &diag).await;
    let alt_key = chart_api_key(&w, "alt").await;
    let alt = format!("http://{}:6333", pod_ip(&pods, "alt-qdrant-0").await);
    need(call(
        "PUT",
        &alt,
        "/collections/notes?wait=true",
        Some(&alt_key),
        Some(json!({"vectors": {"size": 4, "distance": "Cosine"}})),
    ));
    let alt_backup = |name: &str, extra: &str| {
        backup_yaml(
            name,
            "{kind: StatefulSet, name: alt-qdrant}",
            &s3,
            &bucket,
            "alt",
            extra,
        )
    };
    w.apply(&alt_backup("alt-files", "  mode: shard-file\n"));
    let failed = w.ended(NS, "qdrantbackups", "alt-files", 120, &diag).await;
    let said = failed["status"].to_string();
    assert_eq!(failed["status"]["phase"], "Failed", "{said}");
    assert!(
        said.contains("file and shard-file modes are off")
            && said.contains("/qdrant/snapshots-alt")
            && said.contains("/qdrant/snapshots,"),
        "{said}"
    );
    w.apply(&alt_backup("alt-auto", ""));
    let _ = w
        .completed::<Value>(NS, "qdrantbackups", "alt-auto", 120, &diag)
        .await;
}

/// The agent certificate of StatefulSet `sts`'s pods: its sha256, and the
/// CA fingerprint and expiry its Secret records.
async fn agent_cert(w: &World, sts: &str) -> (String, String, jiff::Timestamp) {
    use sha2::{Digest, Sha256};
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(w.admin.clone(), NS);
    let s = secrets
        .get(&format!("{sts}-agent-tls"))
        .await
        .expect("the agents' TLS Secret");
    let ann = s.metadata.annotations.unwrap_or_default();
    (
        hex::encode(Sha256::digest(&s.data.unwrap_or_default()["tls.crt"].0)),
        ann["qdrant.io/ca-sha256"].clone(),
        ann["qdrant.io/not-after"].parse().unwrap(),
    )
}

/// `pod`'s uid and its containers' restart counts.
async fn incarnation(pods: &Api<Pod>, pod: &str) -> (String, Vec<i32>) {
    let p = pods.get(pod).await.unwrap();
    let restarts = p
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default()
        .iter()
        .map(|c| c.restart_count)
        .collect();
    (p.metadata.uid.unwrap_or_default(), restarts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_minute_agent_certificate_and_a_new_ca_reach_the_agent_without_a_restart() {
    // Certificates of mutual TLS that live two minutes: each is renewed
    // well before it expires, again and again, while the pod runs on.
    let (w, node, s3, bucket) = start("certs", &["AGENT_CERT_VALIDITY=2m"]).await;
    let diag = || diagnosis(&w, &node);
    // The chart with its snapshots on their own claim: the agent shares it.
    w.apply(&node.local_volumes("certs", 2, "1Gi"));
    let values = format!(
        "{}snapshotPersistence: {{enabled: true, size: 1Gi}}\n",
        chart_values(1)
    );
    helm_install(&w, "short", &values);
    statefulset_ready(&w, "short-qdrant", 1, &diag).await;
    let pods: Api<Pod> = Api::namespaced(w.admin.clone(), NS);
    let pod = pods.get("short-qdrant-0").await.unwrap();
    let spec = pod.spec.unwrap();
    let claim = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "qdrant-snapshots")
        .and_then(|v| v.persistent_volume_claim.clone());
    assert!(claim.is_some(), "the snapshots are on a claim");
    let agent = spec
        .containers
        .iter()
        .find(|c| c.name == "qdrant-agent")
        .expect("the agent was injected");
    assert!(
        agent
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "qdrant-snapshots" && m.mount_path == "/qdrant/snapshots"),
        "the agent shares the snapshots claim"
    );
    let key = chart_api_key(&w, "short").await;
    seed(
        &format!("http://{}:6333", pod_ip(&pods, "short-qdrant-0").await),
        &key,
    );
    let first = incarnation(&pods, "short-qdrant-0").await;
    const SHORT: &str = "{kind: StatefulSet, name: short-qdrant}";
    back_up(&w, &s3, &bucket, "before-renewal", SHORT, "short", &diag).await;

    // The first certificate expires; by then another one is served.
    let (sha, ca, not_after) = agent_cert(&w, "short-qdrant").await;
    let agent_log = || {
        w.cp.kubectl(&["-n", NS, "logs", "short-qdrant-0", "-c", "qdrant-agent"])
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    };
    let renewed = test_support::stack::eventually(
        180,
        "the agent serves a renewed certificate",
        &diag,
        || async {
            let (now, _, _) = agent_cert(&w, "short-qdrant").await;
            (now != sha && agent_log().contains(&now)).then_some(now)
        },
    )
    .await;
    let wait =
        not_after.duration_since(jiff::Timestamp::now()) + jiff::SignedDuration::from_secs(5);
    if let Ok(wait) = std::time::Duration::try_from(wait) {
        tokio::time::sleep(wait).await;
    }
    back_up(&w, &s3, &bucket, "after-renewal", SHORT, "short", &diag).await;
    assert_ne!(renewed, sha);
    assert_eq!(
        incarnation(&pods, "short-qdrant-0").await,
        first,
        "the pod was restarted for a certificate"
    );

    // A new CA: the operator's CA Secret is removed and the operator
    // restarted; it makes a new CA, issues the agent a certificate from it,
    // and the agent serves it from its files.
    w.kubectl(&["-n", OPERATOR_NS, "delete", "secret", "qdrant-operator-ca"]);
    w.kubectl(&[
        "-n",
        OPERATOR_NS,
        "rollout",
        "restart",
        "deployment/qdrant-operator",
    ]);
    test_support::stack::eventually(
        240,
        "the agent serves a certificate from the new CA",
        &diag,
        || async {
            let (now, by, _) = agent_cert(&w, "short-qdrant").await;
            (by != ca && agent_log().contains(&now)).then_some(())
        },
    )
    .await;
    back_up(&w, &s3, &bucket, "new-ca", SHORT, "short", &diag).await;
    assert_eq!(
        incarnation(&pods, "short-qdrant-0").await,
        first,
        "the pod was restarted for a new CA"
    );
}
