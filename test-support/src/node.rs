//! A real Kubernetes node beside a `ControlPlane`: kube-scheduler, a real
//! kubelet driving containerd and runc (Debian's packages), a CNI bridge,
//! and CoreDNS on the bridge as the kubelet's `clusterDNS`, so pods resolve
//! `<pod>.<headless>.<ns>.svc` as on any cluster. Pods run the images
//! `scripts/images.sh` builds (imported into containerd; nothing is pulled).
//!
//! One node per machine: the kubelet hard-codes `/var/lib/kubelet` paths and
//! the `kubepods` cgroups, so the tests that use it run one at a time (the
//! `real-node` test group in `.config/nextest.toml`). Its state lives in one
//! fixed folder, so that a run killed before it could clean up is cleaned up
//! by the next start.
//!
//! Dropping it (also on panic) stops the kubelet, every container, CoreDNS,
//! the scheduler and containerd, unmounts what they mounted, removes their
//! cgroups and the bridge, and restores the host sysctls the kubelet changes.

use crate::bins;
use crate::control_plane::ControlPlane;
use crate::process::Guarded;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub const NODE_NAME: &str = "node-0";
/// The bridge's own address: pods reach the host (S3, the operator's
/// webhook) and CoreDNS here.
pub const GATEWAY: &str = "198.18.0.1";
const POD_CIDR: &str = "198.18.0.0/24";
const BRIDGE: &str = "qop0";
/// The sysctls the kubelet sets on the host, restored on drop.
const SYSCTLS: [&str; 6] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];
/// Paths the kubelet and containerd hard-code on the host.
const HOST_DIRS: [&str; 8] = [
    "/var/lib/kubelet/device-plugins",
    "/var/lib/kubelet",
    "/var/log/containers",
    "/run/containerd/runc/k8s.io",
    "/run/containerd/runc",
    "/run/containerd/s",
    "/run/containerd/fifo",
    "/run/containerd",
];

pub struct Node {
    kubelet: Option<Guarded>,
    coredns: Option<Guarded>,
    scheduler: Option<Guarded>,
    containerd: Option<Guarded>,
    dir: PathBuf,
}

/// The image archives `scripts/images.sh` writes, pause (the sandbox) first.
pub fn image_archives() -> Result<Vec<PathBuf>, BoxError> {
    let dir = bins::workspace_root().join(".tools/images");
    let all: Vec<PathBuf> = ["pause", "qdrant", "qdrant-agent", "qdrant-operator"]
        .iter()
        .map(|n| dir.join(format!("{n}.tar")))
        .collect();
    let missing: Vec<String> = all
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "image archives missing ({}): run scripts/images.sh",
            missing.join(", ")
        )
        .into());
    }
    Ok(all)
}

fn run(what: &str, cmd: &mut Command) -> Result<String, BoxError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim()).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn quiet(cmd: &mut Command) {
    let _ = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Node {
    /// The node's state folder (fixed: see the module docs).
    pub fn state_dir() -> PathBuf {
        PathBuf::from("/var/tmp/qdrant-operator-node")
    }

    /// Starts the node against `cp` with `images` imported; returns once
    /// the node is Ready.
    pub async fn start(cp: &ControlPlane, images: &[PathBuf]) -> Result<Self, BoxError> {
        if !rustix::process::geteuid().is_root() {
            return Err("the real node needs root (containerd, mounts, a bridge)".into());
        }
        for tool in ["containerd", "ctr", "runc"] {
            if crate::bins::tool(tool).is_relative() {
                return Err(format!(
                    "{tool} not found: apt-get install containerd runc containernetworking-plugins"
                )
                .into());
            }
        }
        let dir = Self::state_dir();
        // Whatever a killed earlier run left.
        cleanup(&dir);
        for sub in [
            "logs",
            "containerd",
            "cni/net.d",
            "kubelet",
            "pod-logs",
            "plugins",
        ] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mut saved = String::new();
        for k in SYSCTLS {
            let v = std::fs::read_to_string(Path::new("/proc/sys").join(k))?;
            saved.push_str(&format!("{k} {}\n", v.trim()));
        }
        std::fs::write(dir.join("sysctl.orig"), saved)?;
        let mut node = Node {
            kubelet: None,
            coredns: None,
            scheduler: None,
            containerd: None,
            dir: dir.clone(),
        };
        let d = |f: &str| dir.join(f).display().to_string();
        let log = |f: &str| std::fs::File::create(dir.join("logs").join(f));

        std::fs::write(dir.join("containerd.toml"), containerd_config(&dir))?;
        std::fs::write(
            dir.join("cni/net.d/10-qop.conflist"),
            format!(
                r#"{{"cniVersion":"1.0.0","name":"qop","plugins":[
 {{"type":"bridge","bridge":"{BRIDGE}","isGateway":true,"ipMasq":false,"hairpinMode":true,
  "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{POD_CIDR}","gateway":"{GATEWAY}"}}]],"dataDir":"{}"}}}},
 {{"type":"loopback"}}]}}"#,
                d("cni/ipam")
            ),
        )?;
        node.containerd = Some(Guarded::spawn(
            "containerd",
            Command::new("containerd")
                .args(["--config", &d("containerd.toml")])
                .stdout(Stdio::null())
                .stderr(log("containerd.log")?),
            Duration::from_secs(5),
        )?);
        let sock = d("containerd/containerd.sock");
        wait("containerd", 30, || {
            run(
                "ctr version",
                Command::new("ctr").args(["-a", &sock, "version"]),
            )
            .is_ok()
        })
        .await?;
        for img in images {
            run(
                &format!("importing {}", img.display()),
                Command::new("ctr")
                    .args(["-a", &sock, "-n", "k8s.io", "images", "import"])
                    .arg(img),
            )?;
        }
        // The bridge exists before the first pod so CoreDNS can bind to it;
        // the CNI bridge plugin takes it over as it is.
        run(
            "ip link add",
            Command::new("ip").args(["link", "add", BRIDGE, "type", "bridge"]),
        )?;
        run(
            "ip addr add",
            Command::new("ip").args(["addr", "add", &format!("{GATEWAY}/24"), "dev", BRIDGE]),
        )?;
        run(
            "ip link set up",
            Command::new("ip").args(["link", "set", BRIDGE, "up"]),
        )?;

        let kubeconfig = cp.admin_kubeconfig().display().to_string();
        node.scheduler = Some(Guarded::spawn(
            "kube-scheduler",
            Command::new(bins::kube_scheduler()?)
                .args(["--kubeconfig", &kubeconfig])
                .args([
                    "--leader-elect=false",
                    "--bind-address",
                    "127.0.0.1",
                    "--secure-port",
                    "0",
                ])
                .stdout(Stdio::null())
                .stderr(log("kube-scheduler.log")?),
            Duration::from_secs(5),
        )?);
        std::fs::write(
            dir.join("Corefile"),
            format!(
                ".:53 {{\n  bind {GATEWAY}\n  errors\n  kubernetes cluster.local in-addr.arpa {{\n    kubeconfig {kubeconfig}\n    pods insecure\n  }}\n}}\n"
            ),
        )?;
        node.coredns = Some(Guarded::spawn(
            "coredns",
            Command::new(bins::coredns()?)
                .args(["-conf", &d("Corefile")])
                .stdout(log("coredns.log")?)
                .stderr(Stdio::null()),
            Duration::from_secs(5),
        )?);
        std::fs::write(
            dir.join("kubelet.yaml"),
            kubelet_config(&dir, &cp.dir().join("ca.crt")),
        )?;
        node.kubelet = Some(Guarded::spawn(
            "kubelet",
            Command::new(bins::kubelet()?)
                .args(["--config", &d("kubelet.yaml")])
                .args(["--kubeconfig", &kubeconfig])
                .args(["--root-dir", &d("kubelet")])
                .args(["--cert-dir", &d("kubelet/pki")])
                .args(["--hostname-override", NODE_NAME, "-v", "1"])
                .stdout(Stdio::null())
                .stderr(log("kubelet.log")?),
            Duration::from_secs(10),
        )?);
        let admin = cp.admin().await?;
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(admin);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let ready = nodes
                .get_opt(NODE_NAME)
                .await
                .ok()
                .flatten()
                .is_some_and(|n| {
                    n.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
            if ready {
                return Ok(node);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "node not Ready within 90 s:\n{}",
                    node.log_tail("kubelet.log", 20)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The last lines of one of the node's logs (kubelet.log, containerd.log,
    /// coredns.log, kube-scheduler.log), for failure messages.
    pub fn log_tail(&self, name: &str, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("logs").join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// What pods in namespace `ns` need on this node besides the namespace:
    /// these Kubernetes binaries are built from the tree OpenShift vendors,
    /// whose ServiceAccount admission adds ConfigMap
    /// `openshift-service-ca.crt` (published by OpenShift's service CA
    /// operator) to every pod's token volume; without it no pod starts.
    pub fn namespace_yaml(cp: &ControlPlane, ns: &str) -> String {
        let ca = std::fs::read_to_string(cp.dir().join("ca.crt")).unwrap_or_default();
        let indented: String = ca.lines().map(|l| format!("    {l}\n")).collect();
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: openshift-service-ca.crt, namespace: {ns}}}\n\
             data:\n  service-ca.crt: |\n{indented}"
        )
    }

    /// A folder on the node for a `local` PersistentVolume: the kubelet
    /// applies the pod's fsGroup to it, as to a cloud disk.
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        let p = self.dir.join("volumes").join(name);
        let _ = std::fs::create_dir_all(&p);
        p
    }

    /// `n` local PersistentVolumes of `size` with no storage class, for the
    /// claims of StatefulSets that name none.
    pub fn local_volumes(&self, prefix: &str, n: usize, size: &str) -> String {
        (0..n)
            .map(|i| {
                let name = format!("{prefix}-{i}");
                format!(
                    "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {name}}}\n\
                     spec:\n  capacity: {{storage: {size}}}\n  accessModes: [ReadWriteOnce]\n  storageClassName: \"\"\n\
                     \x20 persistentVolumeReclaimPolicy: Retain\n  local: {{path: {}}}\n\
                     \x20 nodeAffinity: {{required: {{nodeSelectorTerms: [{{matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{NODE_NAME}]}}]}}]}}}}\n",
                    self.volume_dir(&name).display()
                )
            })
            .collect::<Vec<_>>()
            .join("---\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The kubelet first, so it restarts nothing while containers go.
        drop(self.kubelet.take());
        remove_containers(&self.dir);
        drop(self.coredns.take());
        drop(self.scheduler.take());
        drop(self.containerd.take());
        // The logs outlive the node, for reading after a failure.
        let kept = std::env::temp_dir().join("qdrant-operator-node-logs");
        let _ = std::fs::remove_dir_all(&kept);
        let _ = std::fs::rename(self.dir.join("logs"), &kept);
        cleanup(&self.dir);
    }
}

fn socket(dir: &Path) -> String {
    dir.join("containerd/containerd.sock").display().to_string()
}

/// Kills and removes every container containerd runs for Kubernetes.
fn remove_containers(dir: &Path) {
    let sock = socket(dir);
    if !Path::new(&sock).exists() {
        return;
    }
    let ctr = |args: &[&str]| {
        Command::new("ctr")
            .args(["-a", &sock, "-n", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let tasks = ctr(&["tasks", "ls", "-q"]);
    for t in tasks.lines() {
        ctr(&["tasks", "kill", "-s", "KILL", t]);
    }
    if !tasks.trim().is_empty() {
        std::thread::sleep(Duration::from_secs(1));
    }
    for t in ctr(&["tasks", "ls", "-q"]).lines() {
        ctr(&["tasks", "rm", "-f", t]);
    }
    for c in ctr(&["containers", "ls", "-q"]).lines() {
        ctr(&["containers", "rm", c]);
    }
}

/// Undoes everything a node under `dir` did to the host; safe to run on
/// a folder that does not exist or a node that is half started.
fn cleanup(dir: &Path) {
    let sock = socket(dir);
    // A killed run's processes: containerd and its shims (their arguments
    // name our socket), the kubelet, scheduler and CoreDNS (their arguments
    // name our folder).
    if let Ok(out) = Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()
    {
        let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        if !pids.is_empty() {
            remove_containers(dir);
            for p in &pids {
                quiet(Command::new("kill").args(["-9", p]));
            }
        }
    }
    quiet(Command::new("pkill").args([
        "-9",
        "-f",
        &format!("containerd-shim-runc-v2 .*-address {sock}"),
    ]));
    // Pod processes whose shim is gone are still in the pods' cgroups.
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        kill_cgroup(&h.path().join("kubepods"));
    }
    // Mounts below the folder, deepest first (pod volumes, netns, rootfs).
    for _ in 0..3 {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| Path::new(m).starts_with(dir))
            .collect();
        if ours.is_empty() {
            break;
        }
        ours.sort_unstable_by(|a, b| b.cmp(a));
        for m in ours {
            quiet(Command::new("umount").args(["-l", m]));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for top in ["kubepods", "k8s.io"] {
            let p = h.path().join(top);
            if p.is_dir() {
                remove_cgroup(&p);
            }
        }
    }
    quiet(Command::new("ip").args(["link", "del", BRIDGE]));
    let _ = std::fs::remove_file("/var/lib/kubelet/device-plugins/kubelet.sock");
    for l in std::fs::read_dir("/var/log/containers")
        .into_iter()
        .flatten()
        .flatten()
    {
        if std::fs::read_link(l.path()).is_ok_and(|t| t.starts_with(dir)) {
            let _ = std::fs::remove_file(l.path());
        }
    }
    for d in HOST_DIRS {
        let _ = std::fs::remove_dir(d);
    }
    if let Ok(saved) = std::fs::read_to_string(dir.join("sysctl.orig")) {
        for (k, v) in saved.lines().filter_map(|l| l.split_once(' ')) {
            let _ = std::fs::write(Path::new("/proc/sys").join(k), v);
        }
    }
    // Only once nothing is mounted below it: never delete through a mount.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mounted = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|m| Path::new(m).starts_with(dir));
    if !mounted {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// SIGKILL to every process in a cgroup tree.
fn kill_cgroup(p: &Path) {
    if !p.is_dir() {
        return;
    }
    for pid in std::fs::read_to_string(p.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
    {
        quiet(Command::new("kill").args(["-9", pid]));
    }
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            kill_cgroup(&e.path());
        }
    }
}

/// Removes a cgroup tree, children first (a cgroup folder is removed with
/// rmdir, never by deleting its files).
fn remove_cgroup(p: &Path) {
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup(&e.path());
        }
    }
    let _ = std::fs::remove_dir(p);
}

async fn wait(what: &str, secs: u64, mut ok: impl FnMut() -> bool) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not start within {secs} s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn containerd_config(dir: &Path) -> String {
    let r = dir.display();
    // No CAP_SYS_RESOURCE in the sandboxes these tests run in: never lower
    // oom_score_adj below containerd's own.
    format!(
        r#"version = 2
root = "{r}/containerd/root"
state = "{r}/containerd/state"
[grpc]
  address = "{r}/containerd/containerd.sock"
[ttrpc]
  address = "{r}/containerd/containerd.sock.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{r}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:local"
  restrict_oom_score_adj = true
  tolerate_missing_hugetlb_controller = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{r}/cni/net.d"
    max_conf_num = 1
"#
    )
}

fn kubelet_config(dir: &Path, client_ca: &Path) -> String {
    let r = dir.display();
    let sock = socket(dir);
    let port = crate::s3_server::free_port().unwrap_or(10250);
    let healthz = crate::s3_server::free_port().unwrap_or(10248);
    // cgroupfs on the host's hybrid cgroups; no iptables chains on a shared
    // host; local images can never be pulled again, so never collect them.
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupsPerQOS: true
enforceNodeAllocatable: ["pods"]
containerRuntimeEndpoint: unix://{sock}
imageServiceEndpoint: unix://{sock}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: AlwaysAllow}}
clusterDNS: ["{GATEWAY}"]
clusterDomain: cluster.local
podLogsDir: {r}/pod-logs
volumePluginDir: {r}/plugins
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}}
rotateCertificates: false
serverTLSBootstrap: false
syncFrequency: 10s
fileCheckFrequency: 5s
nodeStatusUpdateFrequency: 5s
maxPods: 50
makeIPTablesUtilChains: false
resolvConf: /etc/resolv.conf
"#,
        ca = client_ca.display()
    )
}
