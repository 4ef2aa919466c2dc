//! The whole stack on real systems, for end-to-end tests and the demo: a
//! Kubernetes control plane with `manifests/` installed as `kubectl apply -k
//! manifests/` does, the `qdrant-operator` binary running as its own
//! ServiceAccount (so RBAC is enforced exactly as rbac.yaml grants), and a
//! test kubelet that runs the pods with the real Qdrant and the real
//! `qdrant-agent`.

use crate::control_plane::{ControlPlane, OPERATOR_NS, OPERATOR_SA};
use crate::kubelet::{Image, ImageKind, Kubelet};
use crate::process::Guarded;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    crate::bins::workspace_root()
}

/// A binary of the workspace, built beside the running test or example
/// (`target/<profile>/`, one or two levels up from it).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let found = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "{name} is not built: cargo build --workspace --bins (the workspace test run builds it)"
        )
    })
}

/// Fails the test with one line when a real component is missing.
pub fn need<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

pub struct Operator {
    pub log: PathBuf,
    /// Port of its /healthz, /readyz and /metrics on 127.0.0.1.
    pub http_port: u16,
    process: Guarded,
}

impl Operator {
    /// Its Prometheus metrics, as scraped.
    pub fn metrics(&self) -> String {
        let base = format!("http://127.0.0.1:{}", self.http_port);
        crate::real_qdrant::request("GET", &base, "/metrics", None, None)
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn process(&mut self) -> &mut Guarded {
        &mut self.process
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

pub struct World {
    pub cp: ControlPlane,
    pub admin: kube::Client,
    pub operator_kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

impl World {
    /// A control plane with `kubectl apply -k manifests/` done.
    pub async fn start() -> World {
        Self::start_on(need(ControlPlane::start().await)).await
    }

    /// As `start`, on a control plane made for a real kubelet
    /// (`node::Node`).
    pub async fn start_for_node() -> World {
        Self::start_on(need(ControlPlane::start_for_node().await)).await
    }

    async fn start_on(cp: ControlPlane) -> World {
        let admin = need(cp.admin().await);
        let out = need(cp.kubectl(&[
            "apply",
            "-k",
            &repo().join("manifests").display().to_string(),
        ]));
        assert!(
            out.status.success(),
            "kubectl apply -k manifests/ failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cp.wait_crds_established();
        let operator_kubeconfig = need(
            cp.service_account_kubeconfig(OPERATOR_NS, OPERATOR_SA)
                .await,
        );
        World {
            cp,
            admin,
            operator_kubeconfig,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The `qdrant-operator` binary as the Deployment runs it, as its
    /// ServiceAccount, with leader election.
    /// It serves the injection webhook on a free port (and so sets the
    /// caBundle of manifests/' webhook configuration, as it does installed).
    pub fn operator(&self, pod_name: &str) -> Operator {
        self.operator_with(pod_name, &["--webhook-listen", "127.0.0.1:0"])
    }

    /// The operator with extra command-line arguments, allowing the plain
    /// http endpoint of the tests' S3 server on loopback.
    pub fn operator_with(&self, pod_name: &str, extra: &[&str]) -> Operator {
        let mut args = vec!["--allow-insecure-endpoints"];
        args.extend_from_slice(extra);
        self.operator_exactly(pod_name, &args)
    }

    /// The operator with exactly these command-line arguments (besides its
    /// HTTP address and log format): its defaults as installed.
    pub fn operator_exactly(&self, pod_name: &str, extra: &[&str]) -> Operator {
        self.operator_in(OPERATOR_NS, pod_name, extra)
    }

    /// The operator as if installed in namespace `ns` (its CA Secret and
    /// Lease live there), with exactly these arguments.
    pub fn operator_in(&self, ns: &str, pod_name: &str, extra: &[&str]) -> Operator {
        let log = self.dir.path().join(format!("{pod_name}.log"));
        let port = crate::s3_server::free_port().unwrap();
        let process = Guarded::spawn(
            pod_name,
            Command::new(workspace_bin("qdrant-operator"))
                .args([
                    "--http-listen",
                    &format!("127.0.0.1:{port}"),
                    "--log-format",
                    "text",
                ])
                .args(extra)
                .env("KUBECONFIG", &self.operator_kubeconfig)
                .env("POD_NAMESPACE", ns)
                .env("POD_NAME", pod_name)
                .env("RUST_LOG", "info,kube=warn")
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(Stdio::null()),
            Duration::from_secs(10),
        )
        .unwrap();
        Operator {
            log,
            http_port: port,
            process,
        }
    }

    /// A test kubelet for `ns`, running Qdrant's image with the real Qdrant
    /// and the agent's image with the workspace's `qdrant-agent`.
    pub fn kubelet(&self, ns: &str) -> Kubelet {
        let images = vec![
            Image {
                matches: "qdrant-agent".into(),
                kind: ImageKind::Binary {
                    bin: workspace_bin("qdrant-agent"),
                },
            },
            Image {
                matches: "qdrant/qdrant".into(),
                kind: ImageKind::Qdrant {
                    bin: need(crate::bins::qdrant()),
                },
            },
        ];
        need(Kubelet::start(self.admin.clone(), ns, images))
    }

    /// `kubectl apply -f -` as the admin.
    pub fn apply(&self, yaml: &str) {
        let out = need(self.cp.kubectl_stdin(&["apply", "-f", "-"], Some(yaml)));
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl create secret generic` in `ns` with the given key/values.
    pub fn secret(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        let literals: Vec<String> = data
            .iter()
            .map(|(k, v)| format!("--from-literal={k}={v}"))
            .collect();
        let mut args = vec!["-n", ns, "create", "secret", "generic", name];
        args.extend(literals.iter().map(String::as_str));
        self.kubectl(&args);
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = need(self.cp.kubectl(args));
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Sets annotation `key=value` on one object (overwriting it), which
    /// must succeed: a change that makes its reconciler look at it now.
    pub fn annotate(&self, ns: &str, resource: &str, name: &str, annotation: &str) -> String {
        self.kubectl(&[
            "-n",
            ns,
            "annotate",
            "--overwrite",
            resource,
            name,
            annotation,
        ])
    }

    /// `kubectl patch --type=merge` of one object, which must succeed.
    pub fn merge_patch(&self, ns: &str, resource: &str, name: &str, patch: &str) -> String {
        self.kubectl(&[
            "-n",
            ns,
            "patch",
            resource,
            name,
            "--type=merge",
            "-p",
            patch,
        ])
    }
}

/// Polls `f` until it returns Some, or panics with `what` and `diag()`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, diag: impl Fn() -> String, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {secs}s\n{}",
            diag()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

impl World {
    /// The UIDs of the pods in `ns`, sorted: another list means a pod was
    /// replaced.
    pub async fn pod_uids(&self, ns: &str) -> Vec<String> {
        let pods: kube::api::Api<k8s_openapi::api::core::v1::Pod> =
            kube::api::Api::namespaced(self.admin.clone(), ns);
        let mut v: Vec<String> = pods
            .list(&Default::default())
            .await
            .expect("list pods")
            .items
            .into_iter()
            .filter_map(|p| p.metadata.uid)
            .collect();
        v.sort();
        v
    }

    /// Waits until the qdrant.io resource `plural/name` in `ns` has ended
    /// (`status.phase` Completed or Failed) and returns it as JSON.
    pub async fn ended(
        &self,
        ns: &str,
        plural: &str,
        name: &str,
        secs: u64,
        diag: impl Fn() -> String,
    ) -> serde_json::Value {
        let api = qdrant_api(&self.admin, ns, plural);
        eventually(secs, &format!("{plural}/{name} ends"), diag, || async {
            let o = api.get(name).await.ok()?;
            let v = serde_json::to_value(o).ok()?;
            matches!(v["status"]["phase"].as_str(), Some("Completed" | "Failed")).then_some(v)
        })
        .await
    }

    /// As `ended`, and it must have Completed: its status, typed.
    pub async fn completed<S: serde::de::DeserializeOwned>(
        &self,
        ns: &str,
        plural: &str,
        name: &str,
        secs: u64,
        diag: impl Fn() -> String,
    ) -> S {
        let v = self.ended(ns, plural, name, secs, diag).await;
        assert_eq!(
            v["status"]["phase"], "Completed",
            "{plural}/{name} did not complete: {:#}",
            v["status"]
        );
        serde_json::from_value(v["status"].clone()).expect("status")
    }
}

impl World {
    /// Waits until QdrantCluster `ns/name` is Running with `replicas` ready
    /// pods; returns it as JSON.
    pub async fn running(
        &self,
        ns: &str,
        name: &str,
        replicas: i64,
        secs: u64,
        diag: impl Fn() -> String,
    ) -> serde_json::Value {
        let api = qdrant_api(&self.admin, ns, "qdrantclusters");
        eventually(
            secs,
            &format!("QdrantCluster {name} Running with {replicas} ready"),
            diag,
            || async {
                let v = serde_json::to_value(api.get(name).await.ok()?).ok()?;
                let st = &v["status"];
                (st["phase"] == "Running" && st["readyReplicas"] == replicas).then_some(v)
            },
        )
        .await
    }
}

/// A QdrantCluster of `replicas` nodes (distributed when more than one)
/// with its API key from Secret `qdrant-api-key`, small volumes.
pub fn cluster_yaml(ns: &str, name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  replicas: {replicas}\n  version: v1.18.3\n  cluster: {{enabled: {}}}\n  persistence: {{size: 1Gi}}\n\
         \x20 apiKey: {{secretRef: {{name: qdrant-api-key, key: api-key}}}}\n",
        replicas > 1
    )
}

fn qdrant_api(
    client: &kube::Client,
    ns: &str,
    plural: &str,
) -> kube::Api<kube::api::DynamicObject> {
    let ar = kube::api::ApiResource {
        group: "qdrant.io".into(),
        version: "v1alpha1".into(),
        api_version: "qdrant.io/v1alpha1".into(),
        kind: String::new(),
        plural: plural.into(),
    };
    kube::Api::namespaced_with(client.clone(), ns, &ar)
}
