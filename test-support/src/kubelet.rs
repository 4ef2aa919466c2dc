//! A TEST KUBELET: runs the Pods that the real StatefulSet controller
//! creates as local processes, and reports their status like a kubelet.
//! Test support only; nothing of the product runs it.
//!
//! What it emulates:
//! - Network: each pod gets its own loopback address (127.B.x.y); in
//!   arguments and environment values `0.0.0.0`, `127.0.0.1` and `localhost`
//!   become the pod's address, and `<pod>.<subdomain>[.<ns>.svc...]` names
//!   resolve through a hosts file (the cluster DNS).
//! - Filesystem: volumes (emptyDir, configMap, secret, PVC) are directories
//!   under the pod's directory; each container gets a root with a symlink at
//!   every mount path (subPath too), and absolute paths under a mount or the
//!   image's working directory in arguments and environment are mapped under
//!   that root.
//! - Images: the real binary for each known image (`Image`); the Qdrant
//!   image's `entrypoint.sh` maps the absolute paths of its config file.
//! - Probes: httpGet, tcpSocket and grpc readiness probes against the pod's
//!   address decide `Ready`; containers restart when they exit.
//! - Deletion: a pod marked for deletion is stopped (SIGTERM, then SIGKILL)
//!   and removed, as the kubelet confirms a graceful delete.

use crate::process::Guarded;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Probe, Secret, Volume};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a container image runs here.
#[derive(Clone, Debug)]
pub enum ImageKind {
    /// Qdrant's official image: working directory `/qdrant`, default
    /// command `./entrypoint.sh`, which starts the real Qdrant binary.
    Qdrant { bin: PathBuf },
    /// An image whose entrypoint is this binary (the agent's image).
    Binary { bin: PathBuf },
}

#[derive(Clone, Debug)]
pub struct Image {
    /// A container whose image contains this text runs `kind`.
    pub matches: String,
    pub kind: ImageKind,
}

pub struct Kubelet {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    client: kube::Client,
    namespace: String,
    root: tempfile::TempDir,
    images: Vec<Image>,
    block: u8,
    state: tokio::sync::Mutex<State>,
    hosts: Mutex<BTreeMap<String, String>>,
    /// Last, so it is released only after the pods' processes are gone.
    _claim: BlockClaim,
}

/// An address block of 127/8 held by one kubelet across every test process
/// on the machine: two kubelets on one block would hand out the same pod
/// addresses, and a Qdrant of one test could join another test's cluster.
/// A claim is a file named after the block holding the claimant's PID; a
/// claim whose process is gone is taken over.
struct BlockClaim {
    path: PathBuf,
}

impl BlockClaim {
    fn take() -> Result<(u8, BlockClaim), BoxError> {
        Self::take_from(rand::random_range(2..=254))
    }

    /// The first free block from `first` on (wrapping around).
    fn take_from(first: u8) -> Result<(u8, BlockClaim), BoxError> {
        let dir = std::env::temp_dir().join("test-kubelet-blocks");
        std::fs::create_dir_all(&dir)?;
        let start = u16::from(first.clamp(2, 254)) - 2;
        for i in 0..253u16 {
            let block = ((start + i) % 253 + 2) as u8;
            let path = dir.join(block.to_string());
            for _ in 0..2 {
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                {
                    Ok(mut f) => {
                        use std::io::Write;
                        write!(f, "{}", std::process::id())?;
                        return Ok((block, BlockClaim { path }));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let pid = std::fs::read_to_string(&path).unwrap_or_default();
                        // Empty: its claimant is writing it this moment.
                        let held = pid.trim().is_empty()
                            || Path::new(&format!("/proc/{}", pid.trim())).exists();
                        if held {
                            break;
                        }
                        let _ = std::fs::remove_file(&path);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Err("every address block of 127/8 is held by a running test kubelet".into())
    }
}

impl Drop for BlockClaim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Default)]
struct State {
    pods: HashMap<String, PodRun>,
    next_ip: u32,
    /// Addresses by pod name: a pod re-created under the same name keeps
    /// its address, as a StatefulSet pod keeps its DNS name.
    ips: HashMap<String, String>,
}

struct PodRun {
    name: String,
    ip: String,
    containers: Vec<ContainerRun>,
    /// Node lost: processes killed, nothing restarts, pod NotReady.
    down: bool,
    reported: Option<serde_json::Value>,
    started_at: String,
    /// When its Secret and ConfigMap volumes were last brought up to date.
    refreshed: std::time::Instant,
}

/// How often a running pod's Secret and ConfigMap volumes are updated from
/// their objects, as a kubelet does on its periodic sync.
const VOLUME_SYNC: std::time::Duration = std::time::Duration::from_secs(10);

struct ContainerRun {
    name: String,
    image: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    log: PathBuf,
    probe: Option<Probe>,
    ports: Vec<(String, i32)>,
    process: Option<Guarded>,
    restarts: i32,
    ready: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Kubelet {
    /// Runs the pods of `namespace` with `client` (it needs pods, pods/status,
    /// secrets and configmaps access: the admin's).
    pub fn start(
        client: kube::Client,
        namespace: &str,
        images: Vec<Image>,
    ) -> Result<Self, BoxError> {
        let root = tempfile::Builder::new().prefix("kubelet-").tempdir()?;
        let (block, claim) = BlockClaim::take()?;
        let inner = Arc::new(Inner {
            client,
            namespace: namespace.to_string(),
            root,
            images,
            // A /16 of 127/8 of its own, so kubelets of tests running at
            // once never hand out the same address.
            block,
            state: tokio::sync::Mutex::new(State::default()),
            hosts: Mutex::new(BTreeMap::new()),
            _claim: claim,
        });
        let run = inner.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = run.tick().await {
                    tracing::warn!(error = %e, "test kubelet");
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        });
        Ok(Self { inner, task })
    }

    /// The address pod `name` has (once the kubelet has seen it).
    pub async fn pod_ip(&self, name: &str) -> Option<String> {
        self.inner.state.lock().await.ips.get(name).cloned()
    }

    /// The log of one container of pod `name` (all its restarts).
    pub fn logs(&self, pod: &str, container: &str) -> String {
        std::fs::read_to_string(self.inner.pod_dir(pod).join(format!("{container}.log")))
            .unwrap_or_default()
    }

    /// Every container log of every pod this kubelet ran.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        let Ok(pods) = std::fs::read_dir(self.inner.root.path().join("pods")) else {
            return out;
        };
        for p in pods.filter_map(Result::ok) {
            for f in std::fs::read_dir(p.path())
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
            {
                if f.path().extension().is_some_and(|e| e == "log") {
                    out.push_str(&std::fs::read_to_string(f.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    /// Node loss: SIGKILL every container of the pod, restart nothing, and
    /// report it NotReady.
    pub async fn fail_node(&self, pod: &str) {
        let mut st = self.inner.state.lock().await;
        if let Some(run) = st.pods.values_mut().find(|r| r.name == pod) {
            run.down = true;
            for c in &mut run.containers {
                if let Some(mut p) = c.process.take() {
                    p.kill();
                }
                c.ready = false;
            }
        }
    }

    /// The node is back: the pod's containers start again.
    pub async fn recover_node(&self, pod: &str) {
        let mut st = self.inner.state.lock().await;
        if let Some(run) = st.pods.values_mut().find(|r| r.name == pod) {
            run.down = false;
        }
    }

    /// SIGSTOP (`freeze: true`) or SIGCONT one container: a frozen process
    /// still has its listening socket, so the kernel accepts connections
    /// that are then never answered (a hung process, not a dead one).
    /// Returns how many processes were signalled.
    pub async fn freeze_container(&self, pod: &str, container: &str, freeze: bool) -> usize {
        let st = self.inner.state.lock().await;
        let sig = if freeze {
            rustix::process::Signal::STOP
        } else {
            rustix::process::Signal::CONT
        };
        let mut n = 0;
        for p in st
            .pods
            .values()
            .filter(|r| r.name == pod)
            .flat_map(|r| r.containers.iter())
            .filter(|c| c.name == container)
            .filter_map(|c| c.process.as_ref())
        {
            p.signal(sig);
            n += 1;
        }
        n
    }

    /// SIGKILL one container; it restarts like any exited container.
    pub async fn kill_container(&self, pod: &str, container: &str) {
        let mut st = self.inner.state.lock().await;
        if let Some(c) = st
            .pods
            .values_mut()
            .filter(|r| r.name == pod)
            .flat_map(|r| r.containers.iter_mut())
            .find(|c| c.name == container)
            && let Some(mut p) = c.process.take()
        {
            p.kill();
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(mut st) = self.inner.state.try_lock() {
            st.pods.clear();
        }
    }
}

impl Inner {
    fn pod_dir(&self, pod: &str) -> PathBuf {
        self.root.path().join("pods").join(pod)
    }

    async fn tick(&self) -> Result<(), BoxError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let pods = api.list(&ListParams::default()).await?;
        let mut st = self.state.lock().await;
        let seen: Vec<String> = pods
            .items
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        st.pods.retain(|uid, _| seen.contains(uid));
        for pod in &pods.items {
            let (Some(uid), Some(name)) = (pod.metadata.uid.clone(), pod.metadata.name.clone())
            else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                if let Some(mut run) = st.pods.remove(&uid) {
                    for c in &mut run.containers {
                        if let Some(p) = c.process.take() {
                            stop(p).await;
                        }
                    }
                }
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                let _ = api.delete(&name, &dp).await;
                continue;
            }
            if !st.pods.contains_key(&uid) {
                let ip = match st.ips.get(&name) {
                    Some(ip) => ip.clone(),
                    None => {
                        st.next_ip += 1;
                        let n = st.next_ip;
                        let ip = format!("127.{}.{}.{}", self.block, n / 250, n % 250 + 1);
                        st.ips.insert(name.clone(), ip.clone());
                        ip
                    }
                };
                self.add_hosts(pod, &ip)?;
                match self.prepare(pod, &ip).await {
                    Ok(containers) => {
                        st.pods.insert(
                            uid.clone(),
                            PodRun {
                                name: name.clone(),
                                ip,
                                containers,
                                down: false,
                                reported: None,
                                started_at: jiff::Timestamp::now()
                                    .round(jiff::Unit::Second)?
                                    .to_string(),
                                refreshed: std::time::Instant::now(),
                            },
                        );
                    }
                    // A Secret or ConfigMap not there yet: try again, as a
                    // kubelet keeps a pod in ContainerCreating.
                    Err(e) => {
                        tracing::info!(pod = %name, error = %e, "test kubelet: pod not startable yet");
                        continue;
                    }
                }
            }
            let Some(run) = st.pods.get_mut(&uid) else {
                continue;
            };
            if run.refreshed.elapsed() >= VOLUME_SYNC {
                run.refreshed = std::time::Instant::now();
                let dir = self.pod_dir(&name);
                for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
                    if (v.secret.is_some() || v.config_map.is_some())
                        && let Err(e) = self.volume(v, &dir).await
                    {
                        tracing::info!(pod = %name, volume = %v.name, error = %e, "test kubelet: volume not updated");
                    }
                }
            }
            for c in &mut run.containers {
                if run.down {
                    continue;
                }
                let alive = c.process.as_mut().is_some_and(Guarded::running);
                if !alive {
                    if c.process.take().is_some() {
                        c.restarts += 1;
                    }
                    c.ready = false;
                    c.process = Some(spawn(c, &run.name)?);
                    continue;
                }
                c.ready = match &c.probe {
                    Some(p) => probe(p, &run.ip, &c.ports).await,
                    None => true,
                };
            }
            let status = pod_status(run);
            if run.reported.as_ref() != Some(&status) {
                api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": status})),
                )
                .await?;
                run.reported = Some(status);
            }
        }
        Ok(())
    }

    fn add_hosts(&self, pod: &Pod, ip: &str) -> Result<(), BoxError> {
        let spec = pod.spec.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let host = spec.hostname.unwrap_or(name);
        let ns = &self.namespace;
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sub) = spec.subdomain {
            for n in [
                format!("{host}.{sub}"),
                format!("{host}.{sub}.{ns}"),
                format!("{host}.{sub}.{ns}.svc"),
                format!("{host}.{sub}.{ns}.svc.cluster.local"),
            ] {
                hosts.insert(n, ip.to_string());
            }
        }
        let text: String = hosts.iter().map(|(h, i)| format!("{h} {i}\n")).collect();
        std::fs::write(self.root.path().join("hosts"), text)?;
        Ok(())
    }

    /// Materialises the pod's volumes and builds each container's command.
    async fn prepare(&self, pod: &Pod, ip: &str) -> Result<Vec<ContainerRun>, BoxError> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let dir = self.pod_dir(&name);
        // A re-created pod starts from fresh volumes (its PVCs persist).
        let _ = std::fs::remove_dir_all(dir.join("volumes"));
        let _ = std::fs::remove_dir_all(dir.join("containers"));
        std::fs::create_dir_all(&dir)?;
        let mut volumes = HashMap::new();
        for v in spec.volumes.iter().flatten() {
            volumes.insert(v.name.clone(), self.volume(v, &dir).await?);
        }
        let mut out = Vec::new();
        for c in &spec.containers {
            out.push(self.container(pod, c, &volumes, &dir, ip).await?);
        }
        Ok(out)
    }

    async fn volume(&self, v: &Volume, pod_dir: &Path) -> Result<PathBuf, BoxError> {
        let ns = &self.namespace;
        if let Some(pvc) = &v.persistent_volume_claim {
            // A claim's data lives as long as the claim: a claim deleted
            // and made again under its name (a node removed, then added
            // back) starts empty, as a newly provisioned volume does.
            let api: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
                Api::namespaced(self.client.clone(), ns);
            let uid = api
                .get_opt(&pvc.claim_name)
                .await?
                .and_then(|c| c.metadata.uid)
                .ok_or_else(|| format!("claim {} not found", pvc.claim_name))?;
            let d = self
                .root
                .path()
                .join("pvc")
                .join(format!("{}-{uid}", pvc.claim_name));
            std::fs::create_dir_all(&d)?;
            return Ok(d);
        }
        let d = pod_dir.join("volumes").join(&v.name);
        std::fs::create_dir_all(&d)?;
        let files: BTreeMap<String, Vec<u8>> = if let Some(cm) = &v.config_map {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
            let m = api.get(&cm.name).await?;
            m.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .chain(
                    m.binary_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                )
                .collect()
        } else if let Some(s) = &v.secret {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
            let name = s.secret_name.clone().unwrap_or_default();
            // An optional Secret that does not exist mounts empty, as a
            // kubelet does; a required one keeps the pod from starting.
            let m = match api.get_opt(&name).await? {
                Some(m) => m,
                None if s.optional == Some(true) => Secret::default(),
                None => return Err(format!("secret {name} not found").into()),
            };
            m.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        } else if v.empty_dir.is_some() {
            BTreeMap::new()
        } else {
            return Err(
                format!("volume {}: kind not supported by the test kubelet", v.name).into(),
            );
        };
        // File modes as a kubelet sets them (defaultMode; 0644 when unset),
        // so a script from a ConfigMap with defaultMode 0755 runs.
        let mode = v
            .config_map
            .as_ref()
            .and_then(|c| c.default_mode)
            .or_else(|| v.secret.as_ref().and_then(|s| s.default_mode))
            .unwrap_or(0o644);
        for (k, bytes) in files {
            use std::os::unix::fs::PermissionsExt;
            let f = d.join(&k);
            if std::fs::read(&f).is_ok_and(|b| b == bytes) {
                continue;
            }
            // Replaced whole, never seen half-written, as a kubelet does.
            let tmp = d.join(format!("..{k}.tmp"));
            std::fs::write(&tmp, bytes)?;
            // The tests run as one user: the owner bits must stay readable.
            let mode = (mode as u32) | 0o400;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
            std::fs::rename(&tmp, &f)?;
        }
        Ok(d)
    }

    async fn container(
        &self,
        pod: &Pod,
        c: &Container,
        volumes: &HashMap<String, PathBuf>,
        pod_dir: &Path,
        ip: &str,
    ) -> Result<ContainerRun, BoxError> {
        let image = c.image.clone().unwrap_or_default();
        let kind = self
            .images
            .iter()
            .find(|i| image.contains(&i.matches))
            .map(|i| i.kind.clone())
            .ok_or_else(|| format!("no binary for image {image}"))?;
        let rootfs = pod_dir.join("containers").join(&c.name);
        std::fs::create_dir_all(&rootfs)?;
        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let vol = volumes
                .get(&m.name)
                .ok_or_else(|| format!("container {}: no volume {}", c.name, m.name))?;
            let target = match &m.sub_path {
                Some(s) if !s.is_empty() => vol.join(s),
                _ => vol.clone(),
            };
            let link = rootfs.join(m.mount_path.trim_start_matches('/'));
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::os::unix::fs::symlink(&target, &link)?;
            mounts.push(m.mount_path.clone());
        }
        let workdir = match &kind {
            ImageKind::Qdrant { .. } => "/qdrant".to_string(),
            ImageKind::Binary { .. } => "/".to_string(),
        };
        let cwd = rootfs.join(
            c.working_dir
                .as_deref()
                .unwrap_or(&workdir)
                .trim_start_matches('/'),
        );
        std::fs::create_dir_all(&cwd)?;
        let map = |s: &str| -> String { map_value(s, &rootfs, &mounts, &workdir, ip) };
        let mut argv: Vec<String> = Vec::new();
        match &kind {
            ImageKind::Qdrant { bin } => {
                write_qdrant_entrypoint(&cwd, &rootfs, bin, &self.root.path().join("hosts"))?;
                match &c.command {
                    Some(cmd) => argv.extend(cmd.iter().map(|s| map(s))),
                    None => argv.push("./entrypoint.sh".into()),
                }
            }
            ImageKind::Binary { bin } => {
                argv.push(bin.display().to_string());
                argv.extend(c.command.iter().flatten().skip(1).map(|s| map(s)));
            }
        }
        argv.extend(c.args.iter().flatten().map(|s| map(s)));
        let mut env = vec![
            (
                "HOSTNAME".to_string(),
                pod.metadata.name.clone().unwrap_or_default(),
            ),
            (
                "PATH".to_string(),
                std::env::var("PATH").unwrap_or_default(),
            ),
        ];
        if matches!(kind, ImageKind::Qdrant { .. }) {
            env.push(("QDRANT__SERVICE__HOST".into(), ip.to_string()));
            env.push(("QDRANT__TELEMETRY_DISABLED".into(), "true".into()));
        }
        for e in c.env.iter().flatten() {
            if let Some(v) = self.env_value(pod, e, ip).await? {
                env.push((e.name.clone(), map(&v)));
            }
        }
        let ports = c
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
            .collect();
        Ok(ContainerRun {
            name: c.name.clone(),
            image,
            argv,
            env,
            cwd,
            log: pod_dir.join(format!("{}.log", c.name)),
            probe: c.readiness_probe.clone(),
            ports,
            process: None,
            restarts: 0,
            ready: false,
        })
    }

    async fn env_value(&self, pod: &Pod, e: &EnvVar, ip: &str) -> Result<Option<String>, BoxError> {
        if let Some(v) = &e.value {
            return Ok(Some(v.clone()));
        }
        let Some(from) = &e.value_from else {
            return Ok(None);
        };
        if let Some(f) = &from.field_ref {
            let m = &pod.metadata;
            return Ok(match f.field_path.as_str() {
                "metadata.name" => m.name.clone(),
                "metadata.namespace" => m.namespace.clone(),
                "metadata.uid" => m.uid.clone(),
                "status.podIP" => Some(ip.to_string()),
                other => {
                    return Err(
                        format!("fieldRef {other}: not supported by the test kubelet").into(),
                    );
                }
            });
        }
        if let Some(s) = &from.secret_key_ref {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
            let secret = match api.get_opt(&s.name).await? {
                Some(x) => x,
                None if s.optional == Some(true) => return Ok(None),
                None => return Err(format!("Secret {} not found", s.name).into()),
            };
            let v = secret
                .data
                .unwrap_or_default()
                .get(&s.key)
                .map(|b| String::from_utf8_lossy(&b.0).to_string());
            return match v {
                Some(v) => Ok(Some(v)),
                None if s.optional == Some(true) => Ok(None),
                None => Err(format!("Secret {} has no key {}", s.name, s.key).into()),
            };
        }
        if let Some(s) = &from.config_map_key_ref {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
            let cm = api.get(&s.name).await?;
            return Ok(cm.data.unwrap_or_default().get(&s.key).cloned());
        }
        Err(format!("env {}: source not supported by the test kubelet", e.name).into())
    }
}

/// Maps one argument or environment value into the pod's world: absolute
/// paths under a mount (or the image's working directory) under the
/// container's root, and the wildcard/loopback addresses to the pod's own.
fn map_value(s: &str, rootfs: &Path, mounts: &[String], workdir: &str, ip: &str) -> String {
    let under = |p: &str, dir: &str| {
        dir != "/" && (p == dir || p.starts_with(&format!("{}/", dir.trim_end_matches('/'))))
    };
    // A mount's folder, or a folder holding mounts (e.g. /qdrant/config
    // with files mounted in it).
    if s.starts_with('/')
        && (mounts.iter().any(|m| under(s, m) || under(m, s)) || under(s, workdir))
    {
        return rootfs.join(s.trim_start_matches('/')).display().to_string();
    }
    s.replace("0.0.0.0", ip)
        .replace("127.0.0.1", ip)
        .replace("localhost", ip)
}

/// The Qdrant image's `entrypoint.sh`, emulated: Qdrant reads
/// `config/$RUN_MODE.yaml` (production in the image) whose absolute paths
/// are the container's; a copy with those paths under the container's root
/// is passed last with `--config-path`, so it wins. Peer URLs resolve
/// through the kubelet's hosts file.
fn write_qdrant_entrypoint(
    cwd: &Path,
    rootfs: &Path,
    bin: &Path,
    hosts: &Path,
) -> Result<(), BoxError> {
    let script = format!(
        r#"#!/bin/bash
ROOT='{root}'
MODE="${{RUN_MODE:-production}}"
touch "$ROOT/.qdrant-config.yaml"
if [ -f "config/$MODE.yaml" ]; then
  sed "s#: /#: $ROOT/#" "config/$MODE.yaml" > "$ROOT/.qdrant-config.yaml"
fi
# A peer's name resolves once its pod has an address, as cluster DNS does:
# wait (up to 60 s) until every host in a URL argument is in the hosts file.
for _ in $(seq 1 300); do
  args=()
  pending=
  for a in "$@"; do
    while read -r host ip; do a="${{a//\/\/$host:/\/\/$ip:}}"; done < '{hosts}'
    if [[ "$a" =~ ://[^/:]*[a-zA-Z][^/:]*: ]]; then pending=1; fi
    args+=("$a")
  done
  [ -z "$pending" ] && break
  sleep 0.2
done
exec '{bin}' --config-path "$ROOT/.qdrant-config.yaml" "${{args[@]}}"
"#,
        root = rootfs.display(),
        hosts = hosts.display(),
        bin = bin.display(),
    );
    let path = cwd.join("entrypoint.sh");
    std::fs::write(&path, script)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn spawn(c: &ContainerRun, pod: &str) -> Result<Guarded, BoxError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&c.log)?;
    let mut cmd = Command::new(&c.argv[0]);
    cmd.args(&c.argv[1..])
        .env_clear()
        .envs(c.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&c.cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    Ok(Guarded::spawn(
        format!("{pod}/{}", c.name),
        &mut cmd,
        Duration::from_secs(10),
    )?)
}

/// SIGTERM, then SIGKILL after the grace period, without blocking the runtime.
async fn stop(mut p: Guarded) {
    p.signal(rustix::process::Signal::TERM);
    for _ in 0..100 {
        if !p.running() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.kill();
}

fn port_of(
    p: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
    ports: &[(String, i32)],
) -> Option<i32> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match p {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => ports.iter().find(|(n, _)| n == name).map(|(_, p)| *p),
    }
}

async fn probe(p: &Probe, ip: &str, ports: &[(String, i32)]) -> bool {
    let timeout = Duration::from_secs(1);
    if let Some(h) = &p.http_get {
        let Some(port) = port_of(&h.port, ports) else {
            return false;
        };
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let addr = format!("{ip}:{port}");
        let get = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .ok()?;
            let mut buf = vec![0u8; 64];
            let n = s.read(&mut buf).await.ok()?;
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            head.split_whitespace().nth(1)?.parse::<u16>().ok()
        };
        return matches!(
            tokio::time::timeout(timeout, get).await,
            Ok(Some(200..=399))
        );
    }
    if let Some(t) = &p.tcp_socket {
        let Some(port) = port_of(&t.port, ports) else {
            return false;
        };
        return matches!(
            tokio::time::timeout(
                timeout,
                tokio::net::TcpStream::connect(format!("{ip}:{port}"))
            )
            .await,
            Ok(Ok(_))
        );
    }
    if let Some(g) = &p.grpc {
        let check = async {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://{ip}:{}", g.port))
                    .ok()?
                    .connect()
                    .await
                    .ok()?;
            let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
            let r = h
                .check(tonic_health::pb::HealthCheckRequest {
                    service: g.service.clone().unwrap_or_default(),
                })
                .await
                .ok()?;
            Some(
                r.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            )
        };
        return matches!(tokio::time::timeout(timeout, check).await, Ok(Some(true)));
    }
    true
}

fn pod_status(run: &PodRun) -> serde_json::Value {
    let ready = !run.down && run.containers.iter().all(|c| c.ready);
    let flag = |b: bool| if b { "True" } else { "False" };
    let containers: Vec<_> = run
        .containers
        .iter()
        .map(|c| {
            let state = if c.process.is_some() && !run.down {
                json!({"running": {"startedAt": run.started_at}})
            } else {
                json!({"terminated": {"exitCode": 137, "reason": "Error"}})
            };
            json!({"name": c.name, "image": c.image, "imageID": "", "ready": c.ready,
                   "started": c.process.is_some(), "restartCount": c.restarts, "state": state,
                   "containerID": format!("test://{}", c.process.as_ref().and_then(Guarded::pid).unwrap_or(0))})
        })
        .collect();
    json!({
        "phase": "Running",
        "podIP": run.ip,
        "podIPs": [{"ip": run.ip}],
        "hostIP": "127.0.0.1",
        "startTime": run.started_at,
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": flag(ready)},
            {"type": "Ready", "status": flag(ready)},
        ],
        "containerStatuses": containers,
    })
}

#[cfg(test)]
mod tests {
    use super::BlockClaim;

    #[test]
    fn kubelets_hold_distinct_address_blocks_until_dropped() {
        let (a, claim_a) = BlockClaim::take().unwrap();
        let (b, claim_b) = BlockClaim::take().unwrap();
        assert_ne!(a, b);
        let path = claim_a.path.clone();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            std::process::id().to_string()
        );
        drop(claim_a);
        assert!(!path.exists(), "a dropped claim frees its block");
        // A claim left by a process that is gone is taken over.
        std::fs::write(&claim_b.path, "999999999").unwrap();
        std::mem::forget(claim_b);
        let (again, claim) = BlockClaim::take_from(b).unwrap();
        assert_eq!(again, b, "the stale claim of block {b} was not taken over");
        drop(claim);
    }
}
