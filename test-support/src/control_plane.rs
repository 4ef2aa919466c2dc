//! A real Kubernetes control plane on loopback for tests: etcd,
//! kube-apiserver (RBAC on, client-certificate admin, service-account token
//! signing, an audit log of what the operator's ServiceAccount did) and
//! kube-controller-manager (StatefulSet, garbage-collector, namespace,
//! disruption, volume-binding and claim-protection controllers: claims bind to the
//! PersistentVolumes a test creates, which growing a claim needs). No
//! kubelet and no scheduler: see `kubelet`.
//!
//! Dropping it stops the controller manager and the API server before etcd,
//! SIGKILL after a grace period, so no server outlives the test.

use crate::bins;
use crate::process::Guarded;
use kube::config::{KubeConfigOptions, Kubeconfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The operator's ServiceAccount as `manifests/` installs it.
pub const OPERATOR_NS: &str = "qdrant-operator";
pub const OPERATOR_SA: &str = "qdrant-operator";

const GRACE: Duration = Duration::from_secs(5);

pub struct ControlPlane {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    // Fields drop in order: controller manager and API server before etcd.
    controller_manager: Option<Guarded>,
    apiserver: Option<Guarded>,
    etcd: Option<Guarded>,
    dir: tempfile::TempDir,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn err(msg: impl Into<String>) -> BoxError {
    msg.into().into()
}

fn free_port() -> Result<u16, BoxError> {
    Ok(crate::s3_server::free_port()?)
}

fn write(path: &Path, text: &str) -> Result<(), BoxError> {
    std::fs::write(path, text).map_err(|e| err(format!("{}: {e}", path.display())))
}

impl ControlPlane {
    /// Starts etcd, the API server and the controller manager; returns
    /// once the API server's `/readyz` answers ok (a few seconds).
    pub async fn start() -> Result<Self, BoxError> {
        Self::start_with(false).await
    }

    /// As `start`, for a real kubelet (`node::Node`): the API server reaches
    /// kubelets with the admin certificate at their InternalIP (logs, exec),
    /// and the controller manager also runs the EndpointSlice controller,
    /// from which cluster DNS answers for Services and pods.
    pub async fn start_for_node() -> Result<Self, BoxError> {
        Self::start_with(true).await
    }

    async fn start_with(node: bool) -> Result<Self, BoxError> {
        let etcd_bin = bins::etcd()?;
        let apiserver_bin = bins::kube_apiserver()?;
        let kcm_bin = bins::kube_controller_manager()?;
        // etcd on tmpfs where there is one: fsync on disk dominates start-up.
        let dir = tempfile::Builder::new()
            .prefix("control-plane-")
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::Builder::new().prefix("control-plane-").tempdir())?;
        let d = dir.path().to_path_buf();
        write_pki(&d)?;
        write(&d.join("audit-policy.yaml"), &audit_policy())?;

        let (client_port, peer_port) = (free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = Guarded::spawn(
            "etcd",
            Command::new(&etcd_bin)
                .arg("--data-dir")
                .arg(d.join("etcd"))
                .args(["--listen-client-urls", &etcd_url])
                .args(["--advertise-client-urls", &etcd_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("default={peer_url}")])
                .stdout(Stdio::null())
                .stderr(log_file(&d, "etcd.log")?),
            GRACE,
        )?;
        let port = free_port()?;
        let mut cp = ControlPlane {
            url: format!("https://127.0.0.1:{port}"),
            controller_manager: None,
            apiserver: None,
            etcd: Some(etcd),
            dir,
        };
        let p = |f: &str| d.join(f).display().to_string();
        let mut apiserver = Command::new(&apiserver_bin);
        let bind = if node { "0.0.0.0" } else { "127.0.0.1" };
        if !node {
            // Pods get ServiceAccount tokens only on the real node.
            apiserver.args(["--disable-admission-plugins", "ServiceAccount"]);
        }
        if node {
            // Pods reach it at the bridge address; Services' endpoints (the
            // operator's webhook) are called directly, as there is no
            // kube-proxy to route ClusterIPs.
            apiserver
                .arg("--enable-aggregator-routing=true")
                .args(["--kubelet-client-certificate", &p("admin.crt")])
                .args(["--kubelet-client-key", &p("admin.key")])
                .args(["--kubelet-preferred-address-types", "InternalIP,Hostname"]);
        }
        cp.apiserver = Some(Guarded::spawn(
            "kube-apiserver",
            apiserver
                .args(["--etcd-servers", &etcd_url])
                .args(["--bind-address", bind, "--advertise-address", "127.0.0.1"])
                .args(["--secure-port", &port.to_string()])
                .args(["--cert-dir", &p("apiserver-certs")])
                .args(["--tls-cert-file", &p("serving.crt")])
                .args(["--tls-private-key-file", &p("serving.key")])
                .args(["--client-ca-file", &p("ca.crt")])
                .args(["--authorization-mode", "RBAC"])
                .args(["--service-cluster-ip-range", "10.0.0.0/24"])
                .args(["--service-account-issuer", "https://kubernetes.default.svc"])
                .args(["--service-account-key-file", &p("sa.pub")])
                .args(["--service-account-signing-key-file", &p("sa.key")])
                // As on OpenShift: setting blockOwnerDeletion needs update on
                // the owner's finalizers, changing ownerReferences needs delete.
                .args([
                    "--enable-admission-plugins",
                    "OwnerReferencesPermissionEnforcement",
                ])
                .args(["--audit-policy-file", &p("audit-policy.yaml")])
                .args(["--audit-log-path", &p("audit.log")])
                .args(["--audit-log-format", "json"])
                .stdout(Stdio::null())
                .stderr(log_file(&d, "kube-apiserver.log")?),
            GRACE,
        )?);
        write(&d.join("admin.kubeconfig"), &cp.kubeconfig_cert())?;
        cp.wait_ready().await?;
        cp.controller_manager = Some(Guarded::spawn(
            "kube-controller-manager",
            Command::new(&kcm_bin)
                .args(["--kubeconfig", &p("admin.kubeconfig")])
                .args(["--service-account-private-key-file", &p("sa.key")])
                .args(["--root-ca-file", &p("ca.crt")])
                .arg("--leader-elect=false")
                .arg(format!("--controllers=statefulset,garbagecollector,namespace,serviceaccount-token,disruption,persistentvolume-binder,persistentvolumeclaim-protection-controller{}",
                    if node { ",endpointslice,endpoint,nodelifecycle,serviceaccount,root-ca-cert-publisher,deployment,replicaset" } else { "" }))
                .args(["--bind-address", "127.0.0.1", "--secure-port", "0"])
                .stdout(Stdio::null())
                .stderr(log_file(&d, "kube-controller-manager.log")?),
            GRACE,
        )?);
        Ok(cp)
    }

    async fn wait_ready(&mut self) -> Result<(), BoxError> {
        let client = self.admin().await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let req = http::Request::get("/readyz").body(Vec::new())?;
            if let Ok(body) = client.request_text(req).await
                && body.trim() == "ok"
            {
                return Ok(());
            }
            let alive = self.apiserver.as_mut().is_some_and(Guarded::running)
                && self.etcd.as_mut().is_some_and(Guarded::running);
            if !alive || Instant::now() > deadline {
                return Err(err(format!(
                    "kube-apiserver did not become ready: {}",
                    self.log_tail("kube-apiserver.log")
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last lines of one of the servers' logs, for failure messages.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kubeconfig for the cluster admin (`O=system:masters`), for kubectl.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    fn kubeconfig_cert(&self) -> String {
        let d = self.dir.path().display();
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority: {d}/ca.crt\n\
             users:\n- name: admin\n  user:\n    client-certificate: {d}/admin.crt\n    client-key: {d}/admin.key\n\
             contexts:\n- name: test\n  context: {{cluster: test, user: admin}}\ncurrent-context: test\n",
            url = self.url
        )
    }

    pub async fn admin(&self) -> Result<kube::Client, BoxError> {
        client_from(&self.admin_kubeconfig()).await
    }

    /// A kubeconfig that authenticates as ServiceAccount `ns/name` with a real
    /// token from the TokenRequest API, so its holder has exactly the
    /// permissions RBAC grants that ServiceAccount.
    pub async fn service_account_kubeconfig(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<PathBuf, BoxError> {
        let out = self.kubectl(&["-n", ns, "create", "token", name, "--duration=24h"])?;
        if !out.status.success() {
            return Err(err(format!(
                "kubectl create token {ns}/{name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let token = String::from_utf8(out.stdout)?.trim().to_string();
        let d = self.dir.path().display();
        let path = self.dir.path().join(format!("sa-{ns}-{name}.kubeconfig"));
        write(
            &path,
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority: {d}/ca.crt\n\
                 users:\n- name: sa\n  user:\n    token: {token}\n\
                 contexts:\n- name: test\n  context: {{cluster: test, user: sa, namespace: {ns}}}\ncurrent-context: test\n",
                url = self.url
            ),
        )?;
        Ok(path)
    }

    pub async fn service_account(&self, ns: &str, name: &str) -> Result<kube::Client, BoxError> {
        client_from(&self.service_account_kubeconfig(ns, name).await?).await
    }

    /// Waits until every CRD is Established (served), or panics saying why.
    pub fn wait_crds_established(&self) {
        let out = self
            .kubectl(&[
                "wait",
                "--for=condition=Established",
                "crd",
                "--all",
                "--timeout=60s",
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "CRDs not Established: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `kubectl` as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output, BoxError> {
        self.kubectl_stdin(args, None)
    }

    /// Runs `kubectl` as the admin with `stdin` (e.g. `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<Output, BoxError> {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", self.admin_kubeconfig())
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(format!("cannot run kubectl ({}): {e}", bins::SETUP_HINT)))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// Every request the operator's ServiceAccount made so far, from the
    /// API server's audit log.
    pub fn operator_requests(&self) -> Vec<AuditEvent> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<AuditEvent>(l).ok())
            // A watch is logged when its response starts; it completes only
            // when it ends.
            .filter(|e| e.stage == "ResponseComplete" || e.verb == "watch")
            .collect()
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) the API server, as a network
    /// partition between the operator and the control plane would look.
    pub fn freeze_apiserver(&self, frozen: bool) {
        if let Some(a) = &self.apiserver {
            a.signal(if frozen {
                rustix::process::Signal::STOP
            } else {
                rustix::process::Signal::CONT
            });
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Explicit order: an API server whose etcd is gone retries forever.
        drop(self.controller_manager.take());
        drop(self.apiserver.take());
        drop(self.etcd.take());
    }
}

/// One audit record (the fields the tests read).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub stage: String,
    pub verb: String,
    pub request_u_r_i: String,
    #[serde(default)]
    pub object_ref: Option<ObjectRef>,
    #[serde(default)]
    pub response_status: Option<ResponseStatus>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub subresource: Option<String>,
    #[serde(default)]
    pub api_group: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResponseStatus {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub reason: Option<String>,
}

impl AuditEvent {
    /// The RBAC verbs this request needed: its own, plus `create` for a
    /// PATCH that created the object (server-side apply of a new object is
    /// authorized for both).
    pub fn rbac_verbs(&self) -> Vec<String> {
        let mut v = vec![self.verb.clone()];
        if self.verb == "patch" && self.code() == 201 {
            v.push("create".into());
        }
        v
    }

    /// `group/resource[/subresource]` as RBAC names it (core group empty).
    pub fn resource(&self) -> Option<(String, String)> {
        let o = self.object_ref.as_ref()?;
        let res = match &o.subresource {
            Some(s) if !s.is_empty() => format!("{}/{s}", o.resource),
            _ => o.resource.clone(),
        };
        Some((o.api_group.clone().unwrap_or_default(), res))
    }

    pub fn code(&self) -> u16 {
        self.response_status.as_ref().map_or(0, |s| s.code)
    }
}

/// Logs only what the operator's ServiceAccount does.
fn audit_policy() -> String {
    format!(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
         - level: Metadata\n  users: [\"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}\"]\n\
         - level: None\n"
    )
}

pub async fn client_from(kubeconfig: &Path) -> Result<kube::Client, BoxError> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File, BoxError> {
    Ok(std::fs::File::create(dir.join(name))?)
}

/// A CA, the API server's serving certificate, the admin's client
/// certificate and the service-account signing key pair.
fn write_pki(d: &Path) -> Result<(), BoxError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "test-control-plane-ca");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.clone().self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);

    let serving_key = KeyPair::generate()?;
    let serving = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        "kubernetes.default.svc".to_string(),
        // The real node's bridge address and the `kubernetes` Service's
        // ClusterIP, for pods (`node::Node`).
        crate::node::GATEWAY.to_string(),
        "10.0.0.1".to_string(),
    ])?
    .signed_by(&serving_key, &issuer)?;

    let admin_key = KeyPair::generate()?;
    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin.distinguished_name.push(DnType::CommonName, "admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    let admin = admin.signed_by(&admin_key, &issuer)?;

    let sa = KeyPair::generate()?;
    for (f, v) in [
        ("ca.crt", ca_cert.pem()),
        ("serving.crt", serving.pem()),
        ("serving.key", serving_key.serialize_pem()),
        ("admin.crt", admin.pem()),
        ("admin.key", admin_key.serialize_pem()),
        ("sa.key", sa.serialize_pem()),
        ("sa.pub", sa.public_key_pem()),
    ] {
        write(&d.join(f), &v)?;
    }
    Ok(())
}
