//! The Helm chart, rendered and installed by Helm's own engine: with its
//! defaults it installs what `kubectl apply -k manifests/` installs, its
//! values reach the operator, and installed on a real API server its
//! ServiceAccount runs the operator.

use serde::Deserialize;
use serde_json::Value;
use test_support::bins::helm;
use test_support::control_plane::ControlPlane;
use test_support::stack::{eventually, need, repo, workspace_bin};

fn chart() -> String {
    repo().join("charts/qdrant-operator").display().to_string()
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm template NAME chart -n NS ARGS...`, or Helm's error.
fn template(name: &str, ns: &str, args: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart();
    let mut all = vec!["template", name, chart.as_str(), "-n", ns];
    all.extend_from_slice(args);
    let out = need(helm(&all, None));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(docs(&String::from_utf8_lossy(&out.stdout)))
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// Whether `chart` is `manifest`, except that label maps may hold more
/// (Helm's standard labels); `Err` names the first difference.
fn covers(chart: &Value, manifest: &Value, at: &str) -> Result<(), String> {
    match (chart, manifest) {
        (Value::Object(c), Value::Object(m)) => {
            // A Service's selector is a label map too.
            let labels = at.ends_with(".labels")
                || at.ends_with(".matchLabels")
                || (at.ends_with("spec.selector") && m.values().all(Value::is_string));
            for (k, mv) in m {
                let cv = c.get(k).ok_or_else(|| format!("{at}.{k}: missing"))?;
                covers(cv, mv, &format!("{at}.{k}"))?;
            }
            match c.keys().find(|k| !m.contains_key(*k)) {
                Some(extra) if !labels => Err(format!("{at}.{extra}: not in manifests/")),
                _ => Ok(()),
            }
        }
        (Value::Array(c), Value::Array(m)) if c.len() == m.len() => c
            .iter()
            .zip(m)
            .enumerate()
            .try_for_each(|(i, (c, m))| covers(c, m, &format!("{at}[{i}]"))),
        // kustomize writes 1.0 as 1.
        (Value::Number(c), Value::Number(m)) if c.as_f64() == m.as_f64() => Ok(()),
        _ if chart == manifest => Ok(()),
        _ => Err(format!("{at}: chart has {chart}, manifests/ {manifest}")),
    }
}

#[test]
fn with_its_defaults_the_chart_installs_what_the_manifests_install() {
    let out = std::process::Command::new("kubectl")
        .args(["kustomize", &repo().join("manifests").display().to_string()])
        .output()
        .expect("kubectl (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifests = docs(&String::from_utf8_lossy(&out.stdout));
    let rendered = need(template(
        "qdrant-operator",
        "qdrant-operator",
        &["--include-crds"],
    ));
    // `helm install --create-namespace` makes the namespace; the README says
    // which label to put on it.
    let expected: Vec<&Value> = manifests
        .iter()
        .filter(|o| o["kind"] != "Namespace")
        .collect();
    for m in &expected {
        let (kind, name) = (
            m["kind"].as_str().unwrap(),
            m["metadata"]["name"].as_str().unwrap(),
        );
        let c =
            find(&rendered, kind, name).unwrap_or_else(|| panic!("the chart has no {kind} {name}"));
        if let Err(e) = covers(c, m, &format!("{kind}/{name}")) {
            panic!("the chart and manifests/ differ: {e}");
        }
    }
    assert_eq!(
        rendered.len(),
        expected.len(),
        "the chart installs only what manifests/ does"
    );
    let chart_yaml: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("charts/qdrant-operator/Chart.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(chart_yaml["appVersion"], env!("CARGO_PKG_VERSION"));
}

fn container(objs: &[Value], deployment: &str) -> Value {
    find(objs, "Deployment", deployment).expect("Deployment")["spec"]["template"]["spec"]
        ["containers"][0]
        .clone()
}

fn env(c: &Value, name: &str) -> Option<String> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .map(str::to_string)
}

#[test]
fn values_set_images_replicas_leader_election_and_logs() {
    let objs = need(template(
        "qo",
        "ops",
        &[
            "--set",
            "image.repository=registry.example.com/ops/qdrant-operator,image.tag=1.2.3",
            "--set",
            "agent.image.repository=registry.example.com/ops/qdrant-agent,agent.image.tag=1.2.3",
            "--set",
            "qdrant.image.repository=registry.example.com/mirror/qdrant",
            "--set",
            "replicaCount=1,leaderElection.enabled=false,logFormat=text",
            "--set",
            "agentInjection.enabled=false",
            "--set",
            "storage.allowAmbientCredentials=true,storage.allowInsecureEndpoints=true",
            "--set",
            "agentCertValidity=90d",
        ],
    ));
    // Objects are named after the release, in its namespace.
    let c = container(&objs, "qo-qdrant-operator");
    assert_eq!(c["image"], "registry.example.com/ops/qdrant-operator:1.2.3");
    assert_eq!(
        env(&c, "AGENT_IMAGE").as_deref(),
        Some("registry.example.com/ops/qdrant-agent:1.2.3")
    );
    assert_eq!(
        env(&c, "QDRANT_IMAGE").as_deref(),
        Some("registry.example.com/mirror/qdrant")
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        args,
        [
            "--http-listen",
            "0.0.0.0:8080",
            "--log-format",
            "text",
            "--no-leader-election",
            "--allow-ambient-credentials",
            "--allow-insecure-endpoints",
            "--agent-cert-validity",
            "90d"
        ]
    );
    let deployment = find(&objs, "Deployment", "qo-qdrant-operator").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["metadata"]["namespace"], "ops");
    assert!(
        find(&objs, "Role", "qo-qdrant-operator-leader-election").is_none(),
        "no Lease permissions without leader election"
    );
    assert!(
        find(
            &objs,
            "MutatingWebhookConfiguration",
            "qo-qdrant-operator-agent-injector"
        )
        .is_none(),
        "no webhook without agentInjection"
    );
    let binding = find(&objs, "ClusterRoleBinding", "qo-qdrant-operator").unwrap();
    assert_eq!(binding["subjects"][0]["namespace"], "ops");
    assert_eq!(binding["roleRef"]["name"], "qo-qdrant-operator");

    // Each release elects its own leader.
    let objs = need(template("qo", "ops", &[]));
    let c = container(&objs, "qo-qdrant-operator");
    assert!(
        c["args"]
            .as_array()
            .unwrap()
            .windows(2)
            .any(|w| w[0] == "--lease-name" && w[1] == "qo-qdrant-operator-leader"),
        "{c}"
    );
    // And serves its own webhook, whose certificate names its Service.
    let hook = find(
        &objs,
        "MutatingWebhookConfiguration",
        "qo-qdrant-operator-agent-injector",
    )
    .expect("the release's webhook configuration");
    let svc = &hook["webhooks"][0]["clientConfig"]["service"];
    assert_eq!(
        (svc["name"].as_str(), svc["namespace"].as_str()),
        (Some("qo-qdrant-operator-webhook"), Some("ops"))
    );
    assert!(find(&objs, "Service", "qo-qdrant-operator-webhook").is_some());
    assert!(
        c["args"]
            .as_array()
            .unwrap()
            .windows(2)
            .any(|w| w[0] == "--webhook-hosts"
                && w[1]
                    .as_str()
                    .unwrap()
                    .starts_with("qo-qdrant-operator-webhook.ops.svc,")),
        "{c}"
    );

    // Values Helm refuses, saying why.
    let e = template("qo", "ops", &["--set", "leaderElection.enabled=false"]).unwrap_err();
    assert!(
        e.contains("replicaCount above 1 needs leaderElection.enabled"),
        "{e}"
    );
    let e = template("qo", "ops", &["--set", "logFormat=xml"]).unwrap_err();
    assert!(e.contains("logFormat"), "{e}");
}

#[test]
fn helm_lint_finds_nothing() {
    let out = need(helm(&["lint", &chart()], None));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `helm install` on a real API server as the README says, then the operator
/// as the chart's ServiceAccount, with the arguments of the chart's
/// Deployment: it takes the Lease and creates a cluster's objects, and the
/// API server refuses it nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_on_a_real_api_server_runs_the_operator() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::Api;
    let cp = need(ControlPlane::start().await);
    let kubeconfig = cp.admin_kubeconfig();
    let chart = chart();
    let out = need(helm(
        &[
            "install",
            "qdrant-operator",
            &chart,
            "-n",
            "qdrant-operator",
            "--create-namespace",
        ],
        Some(&kubeconfig),
    ));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "helm install: {said}");
    // The API server warns of schema formats it does not know, on every
    // apply: the CRDs use none.
    assert!(!said.contains("unrecognized format"), "{said}");
    cp.wait_crds_established();
    let deployment: Value = serde_json::from_slice(
        &need(cp.kubectl(&[
            "-n",
            "qdrant-operator",
            "get",
            "deployment",
            "qdrant-operator",
            "-o",
            "json",
        ]))
        .stdout,
    )
    .expect("the chart's Deployment exists");
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .map(|a| {
            a.replace("0.0.0.0:8080", "127.0.0.1:0")
                .replace("0.0.0.0:9443", "127.0.0.1:0")
        })
        .collect();
    let sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    let sa_kubeconfig = need(cp.service_account_kubeconfig("qdrant-operator", sa).await);
    let log = cp.dir().join("operator.log");
    let _operator = test_support::process::Guarded::spawn(
        "qdrant-operator",
        std::process::Command::new(workspace_bin("qdrant-operator"))
            .args(&args)
            .env("KUBECONFIG", &sa_kubeconfig)
            .env("POD_NAMESPACE", "qdrant-operator")
            .env("POD_NAME", "qdrant-operator-0")
            .env("QDRANT_IMAGE", env(c, "QDRANT_IMAGE").unwrap())
            .env("AGENT_IMAGE", env(c, "AGENT_IMAGE").unwrap())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::process::Stdio::null()),
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    let admin = need(cp.admin().await);
    let diag = || {
        format!(
            "operator log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "qdrant-operator");
    eventually(
        60,
        "the operator holds the release's Lease",
        diag,
        || async {
            let l = leases.get_opt("qdrant-operator-leader").await.ok()??;
            (l.spec?.holder_identity? == "qdrant-operator-0").then_some(())
        },
    )
    .await;
    // Its injection webhook is trusted: the caBundle holds the operator's CA.
    eventually(30, "the webhook's caBundle is set", diag, || async {
        let out = cp
            .kubectl(&[
                "get",
                "mutatingwebhookconfiguration",
                "qdrant-operator-agent-injector",
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ])
            .ok()?;
        (!out.stdout.is_empty()).then_some(())
    })
    .await;
    need(cp.kubectl(&["create", "namespace", "search"]));
    let out = need(cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {name: vectors, namespace: search}\n\
             spec: {replicas: 1, version: v1.18.3}\n",
        ),
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sts: Api<StatefulSet> = Api::namespaced(admin, "search");
    let made = eventually(60, "the operator creates the StatefulSet", diag, || async {
        sts.get_opt("vectors").await.ok().flatten()
    })
    .await;
    let pod = made.spec.unwrap().template.spec.unwrap();
    let images: Vec<String> = pod
        .containers
        .iter()
        .filter_map(|c| c.image.clone())
        .collect();
    assert_eq!(
        images,
        [
            "qdrant/qdrant:v1.18.3",
            "ghcr.io/qdrant-operator/qdrant-agent:0.1.0"
        ],
        "the images the chart's values name"
    );
    let denied: Vec<String> = cp
        .operator_requests()
        .into_iter()
        .filter(|r| r.code() == 403)
        .map(|r| r.request_u_r_i)
        .collect();
    assert!(denied.is_empty(), "refused: {denied:?}\n{}", diag());
}

#[test]
fn monitoring_values_add_a_pod_monitor_and_the_tested_alerts() {
    let off = need(template("qo", "ops", &[]));
    assert!(
        !off.iter().any(|o| o["kind"] == "PodMonitor"
            || o["kind"] == "PrometheusRule"
            || o["metadata"]["name"] == "qo-qdrant-operator-dashboard"),
        "monitoring is off by default"
    );
    let on = need(template(
        "qo",
        "ops",
        &[
            "--set",
            "monitoring.podMonitor.enabled=true,monitoring.prometheusRule.enabled=true,monitoring.grafanaDashboard.enabled=true",
            "--set",
            "monitoring.prometheusRule.backupMaxAgeSeconds=86400,monitoring.prometheusRule.labels.release=kube-prometheus",
        ],
    ));
    // The PodMonitor finds the operator's pods and their metrics port.
    let pm = find(&on, "PodMonitor", "qo-qdrant-operator").expect("a PodMonitor");
    let deployment = find(&on, "Deployment", "qo-qdrant-operator").unwrap();
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "the PodMonitor selects the pods by {k}");
    }
    let port = pm["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .unwrap();
    let ports = &deployment["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert!(
        ports.as_array().unwrap().iter().any(|p| p["name"] == port),
        "{ports}"
    );
    // The agents' PodMonitor finds the pods the webhook injects, in every
    // namespace, by the port the injected sidecar names.
    let agents = need(template(
        "qo",
        "ops",
        &["--set", "monitoring.agentPodMonitor.enabled=true"],
    ));
    let pm =
        find(&agents, "PodMonitor", "qo-qdrant-operator-agents").expect("the agents' PodMonitor");
    let webhook = find(
        &agents,
        "MutatingWebhookConfiguration",
        "qo-qdrant-operator-agent-injector",
    )
    .unwrap();
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"],
        webhook["webhooks"][0]["objectSelector"]["matchLabels"]
    );
    assert_eq!(pm["spec"]["namespaceSelector"]["any"], true);
    let port = pm["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .unwrap();
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "qdrant-0", "namespace": "vectors",
            "labels": {qdrant_operator::inject::OPT_IN: "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                "name": "qdrant", "uid": "u-1", "controller": true}]},
        "spec": {"containers": [{"name": "qdrant", "image": "qdrant/qdrant:v1.18.3",
            "ports": [{"name": "http", "containerPort": 6333}],
            "volumeMounts": [{"name": "snapshots", "mountPath": "/qdrant/snapshots"}]}],
            "volumes": [{"name": "snapshots", "emptyDir": {}}]}
    }))
    .unwrap();
    let plan = qdrant_operator::inject::plan(&pod, "agent:1", 256)
        .unwrap()
        .expect("the pod is injected");
    let patch = serde_json::to_string(&plan.patch).unwrap();
    assert!(patch.contains(&format!("\"name\":\"{port}\"")), "{patch}");
    // The rule is files/alerts.yaml plus the age rule; promtool takes it.
    let rule = find(&on, "PrometheusRule", "qo-qdrant-operator").expect("a PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "kube-prometheus");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, serde_yaml::to_string(&rule["spec"]).unwrap()).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules", &file.display().to_string()])
        .output()
        .expect("promtool runs (scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SUCCESS: 6 rules found"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
