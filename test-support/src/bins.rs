//! Finds the real servers the tests run: Qdrant, kube-apiserver,
//! kube-controller-manager and etcd. In order: an explicit environment
//! variable, `PATH`, the project's git-ignored `.tools/bin/`, and finally
//! the xz-compressed copies in `../shared/bin/` beside the checkout, unpacked
//! into `.tools/bin/` once. Elsewhere users get them from Qdrant's release
//! tarball and the envtest binaries (`scripts/tools.sh` says how).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (where `.tools/` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub const SETUP_HINT: &str = "run scripts/tools.sh (or set the path in the variable named)";

/// The binary `name`, looked up as described in the module docs.
pub fn find(name: &str, env_var: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{env_var}={} is not a file", p.display()))
        };
    }
    if let Some(p) = on_path(name) {
        return Ok(p);
    }
    let tools = workspace_root().join(".tools/bin");
    let local = tools.join(name);
    if local.is_file() {
        return Ok(local);
    }
    if let Some(packed) = shared_copy(name) {
        return unpack(&packed, &tools, name);
    }
    Err(format!("{name} not found: {SETUP_HINT} ({env_var})"))
}

pub fn qdrant() -> Result<PathBuf, String> {
    find("qdrant", "QDRANT_BIN")
}

pub fn kube_apiserver() -> Result<PathBuf, String> {
    find("kube-apiserver", "KUBE_APISERVER_BIN")
}

pub fn kube_controller_manager() -> Result<PathBuf, String> {
    find("kube-controller-manager", "KUBE_CONTROLLER_MANAGER_BIN")
}

pub fn etcd() -> Result<PathBuf, String> {
    find("etcd", "ETCD_BIN")
        .map_err(|_| "etcd not found: apt-get install etcd-server (or set ETCD_BIN)".to_string())
}

/// A helper tool the tests run (moto_server, s3s-fs, mitmdump): where
/// `scripts/setup.sh` installs it under `.tools/` (the versions it pins;
/// another moto on `PATH` answers multipart uploads differently), then
/// `PATH`. Falls back to the bare name, so the error names what was missing.
pub fn tool(name: &str) -> PathBuf {
    let tools = workspace_root().join(".tools");
    ["bin", "venv/bin", "mitm/bin"]
        .iter()
        .map(|d| tools.join(d).join(name))
        .find(|p| p.is_file())
        .or_else(|| on_path(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn shared_copy(name: &str) -> Option<PathBuf> {
    let dir = workspace_root().parent()?.join("shared/bin");
    let prefix = format!("{name}-");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(&prefix) && f.ends_with("-x86_64-linux.xz"))
        })
}

/// Unpacks into a temporary file and renames it into place, so test
/// processes racing to unpack never see a half-written binary.
fn unpack(packed: &Path, dir: &Path, name: &str) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let file = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let status = Command::new("xz")
        .arg("-dc")
        .arg(packed)
        .stdout(file)
        .status()
        .map_err(|e| format!("cannot run xz to unpack {}: {e}", packed.display()))?;
    if !status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("xz could not unpack {}", packed.display()));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .and_then(|_| std::fs::rename(&tmp, &target))
        .map_err(|e| format!("{}: {e}", target.display()))?;
    Ok(target)
}

/// Runs `scripts/helm.py`, the `helm` commands of Helm's own Go engine that
/// `scripts/setup.sh` installs into `.tools/helm`, as the admin of
/// `kubeconfig` when given.
pub fn helm(args: &[&str], kubeconfig: Option<&Path>) -> Result<std::process::Output, String> {
    let root = workspace_root();
    let python = root.join(".tools/helm/bin/python");
    if !python.is_file() {
        return Err(format!(
            "{} not found: run scripts/setup.sh (it installs Helm's engine)",
            python.display()
        ));
    }
    let mut cmd = Command::new(python);
    cmd.arg(root.join("scripts/helm.py")).args(args);
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    cmd.output()
        .map_err(|e| format!("cannot run scripts/helm.py: {e}"))
}

/// The real node's programs (`node::Node`): kubelet, kube-scheduler and
/// CoreDNS, built from the same sources as the API server.
pub fn kubelet() -> Result<PathBuf, String> {
    find("kubelet", "KUBELET_BIN")
}

pub fn kube_scheduler() -> Result<PathBuf, String> {
    find("kube-scheduler", "KUBE_SCHEDULER_BIN")
}

pub fn coredns() -> Result<PathBuf, String> {
    find("coredns", "COREDNS_BIN")
}
