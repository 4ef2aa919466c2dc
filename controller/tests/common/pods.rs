//! Simulated pods of a QdrantCluster for end-to-end tests: per pod, a Qdrant
//! double (members of one simulated distributed Qdrant) and a real
//! `qdrant-agent serve` process with mutual TLS and the cluster's token,
//! listening on the pod's own loopback address (127.0.0.2, .3, ...) at the
//! cluster's agent port, as the controller reaches a pod at `podIP:port`.
//! Kubernetes objects go into the in-memory API server double.
#![allow(dead_code)]

use super::kube_double::KubeDouble;
use qdrant_operator::agent_client::AgentTls;
use qdrant_operator::pki::{Ca, agent_dns_names};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use test_support::qdrant_double::Double;

pub const NS: &str = "search";
pub const TOKEN: &str = "0123456789abcdef0123456789abcdef";
pub const QB: &str = "/apis/qdrant.io/v1alpha1/namespaces/search/qdrantbackups";
pub const QR: &str = "/apis/qdrant.io/v1alpha1/namespaces/search/qdrantrestores";
pub const QC: &str = "/apis/qdrant.io/v1alpha1/namespaces/search/qdrantclusters";
pub const PODS: &str = "/api/v1/namespaces/search/pods";
pub const SECRETS: &str = "/api/v1/namespaces/search/secrets";
/// The S3 credentials in the storage Secret: distinctive, so a test can
/// tell they appear nowhere else.
pub const S3_KEY_ID: &str = "AKIAE2EKEYID4LEAK";
pub const S3_SECRET: &str = "e2e-secret-Vb7Qx2LeakCheck";

/// The agent binary, built beside this test by `cargo nextest run --workspace`.
pub fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("qdrant-agent");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p qdrant-agent` (the workspace test run does)",
        bin.display()
    );
    bin
}

pub struct Agent {
    pub child: Option<Child>,
    pub pod: String,
    pub addr: String,
    pub qdrant: String,
    pub log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Agent {
    /// SIGKILL: no cleanup runs, open uploads stay open, as when a node dies.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub struct Cluster {
    pub name: String,
    pub doubles: Vec<Double>,
    pub agents: Vec<Agent>,
    pub port: u16,
    pub tls: AgentTls,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` pods of cluster `name`, pod `i` at 127.0.0.(first_ip + i), each
    /// with an in-process Qdrant double.
    pub async fn start(name: &str, n: usize, first_ip: u8, version: &str) -> Self {
        let doubles = Double::cluster(version, n);
        let mut urls = Vec::new();
        for d in &doubles {
            urls.push(d.clone().start().await.unwrap());
        }
        Self::with_qdrant(name, urls, first_ip, doubles)
    }

    /// Pods whose agents talk to the Qdrant at `qdrant_urls[i]`.
    pub fn with_qdrant(
        name: &str,
        qdrant_urls: Vec<String>,
        first_ip: u8,
        doubles: Vec<Double>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate().unwrap();
        let now = jiff::Timestamp::now();
        let server = ca
            .server_cert(agent_dns_names(&format!("{name}-headless"), NS), now)
            .unwrap();
        let client = ca.client_cert(now).unwrap();
        for (f, v) in [
            ("tls.crt", &server.cert_pem),
            ("tls.key", &server.key_pem),
            ("ca.crt", &ca.cert_pem),
            ("token", &TOKEN.to_string()),
        ] {
            std::fs::write(dir.path().join(f), v).unwrap();
        }
        let port = test_support::s3_server::free_port().unwrap();
        let mut c = Cluster {
            name: name.into(),
            doubles,
            agents: vec![],
            port,
            tls: AgentTls {
                ca_pem: ca.cert_pem.clone(),
                client_cert_pem: client.cert_pem,
                client_key_pem: client.key_pem,
            },
            dir,
        };
        for (i, qdrant) in qdrant_urls.into_iter().enumerate() {
            let addr = format!("127.0.0.{}:{port}", first_ip as usize + i);
            c.agents.push(Agent {
                child: None,
                pod: format!("{name}-{i}"),
                addr,
                qdrant,
                log: c.dir.path().join(format!("agent-{i}.log")),
            });
            c.start_agent(i);
        }
        c
    }

    /// Starts (or restarts) pod `i`'s agent process.
    pub fn start_agent(&mut self, i: usize) {
        let d = self.dir.path();
        let a = &mut self.agents[i];
        a.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&a.log)
            .unwrap();
        let child = Command::new(agent_bin())
            .args(["serve", "--listen", &a.addr, "--qdrant-url", &a.qdrant])
            .args(["--node-name", &a.pod])
            .arg("--token-file")
            .arg(d.join("token"))
            .arg("--tls-cert")
            .arg(d.join("tls.crt"))
            .arg("--tls-key")
            .arg(d.join("tls.key"))
            .arg("--tls-client-ca")
            .arg(d.join("ca.crt"))
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn qdrant-agent");
        a.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&a.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "agent did not listen: {}",
                a.log_text()
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// The cluster's objects: the QdrantCluster (Running), its ready pods
    /// and the agents' token Secret.
    pub fn register(&self, kube: &KubeDouble, version: &str) {
        let name = &self.name;
        kube.create(
            QC,
            &json!({"apiVersion": "qdrant.io/v1alpha1", "kind": "QdrantCluster",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"version": version, "replicas": self.agents.len(),
                         "cluster": {"enabled": true}, "agent": {"port": self.port}}}),
        );
        kube.set_status(QC, name, json!({"phase": "Running"}));
        kube.create(
            SECRETS,
            &secret(&format!("{name}-agent-token"), &[("token", TOKEN)]),
        );
        for a in &self.agents {
            let ip = a.addr.split(':').next().unwrap();
            kube.create(
                PODS,
                &json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": a.pod, "namespace": NS,
                        "labels": {"app.kubernetes.io/name": "qdrant", "app.kubernetes.io/instance": name},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                            "name": name, "uid": "sts-uid", "controller": true}]},
                    "spec": {"containers": [{"name": "qdrant"}, {"name": "agent"}]},
                    "status": {"phase": "Running", "podIP": ip,
                        "conditions": [{"type": "Ready", "status": "True"}]}}),
            );
        }
    }

    /// Live shard snapshot streams opened across all pods.
    pub fn streams_opened(&self) -> u64 {
        self.doubles.iter().map(Double::streams_opened).sum()
    }
}

/// A Secret with `data` as the API server stores it.
pub fn secret(name: &str, pairs: &[(&str, &str)]) -> k8s_openapi::api::core::v1::Secret {
    let mut s = k8s_openapi::api::core::v1::Secret {
        data: Some(
            pairs
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        k8s_openapi::ByteString(v.as_bytes().to_vec()),
                    )
                })
                .collect(),
        ),
        ..Default::default()
    };
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some(NS.into());
    s
}

/// The S3 credentials Secret the storage spec names.
pub fn s3_secret(kube: &KubeDouble, name: &str) {
    kube.create(
        SECRETS,
        &secret(
            name,
            &[
                ("AWS_ACCESS_KEY_ID", S3_KEY_ID),
                ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
            ],
        ),
    );
}
