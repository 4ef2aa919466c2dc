//! Qdrant's configuration, read the way Qdrant reads it (its
//! `src/settings.rs`): its built-in defaults, then `config/config`, then
//! `config/$RUN_MODE`, then `config/local` (each `.yaml`, `.yml` or
//! `.json`, each optional), then the file of `--config-path`, then
//! `QDRANT__SECTION__KEY` environment variables; a later layer wins key by
//! key. The agent takes from it what it needs to talk to that Qdrant: the
//! API keys, the HTTP port, whether TLS is on and the snapshots path.
//!
//! So the agent beside Qdrant's Helm chart finds the key wherever the chart
//! put it: `local.yaml` (`apiKey: true`), `production.yaml` (`config:
//! service: api_key`) or the environment.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What the agent takes from Qdrant's configuration. `None`: no layer set
/// it (Qdrant's default applies: no key, port 6333, no TLS,
/// `./snapshots`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct QdrantConfig {
    pub api_key: Option<String>,
    pub read_only_api_key: Option<String>,
    pub http_port: Option<u16>,
    pub enable_tls: Option<bool>,
    pub snapshots_path: Option<String>,
    /// The files read, in order, to say where a value came from.
    pub files: Vec<PathBuf>,
}

/// Where Qdrant's configuration lives, as this process sees it.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Qdrant's `config/` folder (in Qdrant's image, `/qdrant/config`).
    pub dir: Option<PathBuf>,
    /// Qdrant's `RUN_MODE` (its image sets `production`).
    pub run_mode: String,
    /// The file Qdrant was given with `--config-path`.
    pub config_path: Option<PathBuf>,
}

/// The layered configuration of `sources` and the environment `env`
/// (name, value); a file that exists but cannot be read or parsed is an
/// error that names it, as Qdrant would refuse to start with it.
pub fn load(
    sources: &Sources,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<QdrantConfig> {
    let mut merged = Value::Object(Default::default());
    let mut files = vec![];
    if let Some(dir) = &sources.dir {
        for name in ["config", sources.run_mode.as_str(), "local"] {
            if name.is_empty() || name.contains('/') {
                continue;
            }
            if let Some(path) = ["yaml", "yml", "json"]
                .iter()
                .map(|ext| dir.join(format!("{name}.{ext}")))
                .find(|p| p.is_file())
            {
                merge(&mut merged, read(&path)?);
                files.push(path);
            }
        }
    }
    if let Some(path) = &sources.config_path {
        merge(&mut merged, read(path)?);
        files.push(path.clone());
    }
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("QDRANT__") else {
            continue;
        };
        let keys: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if keys.iter().any(String::is_empty) {
            continue;
        }
        set(&mut merged, &keys, Value::String(value));
    }
    let text = |p: &str| {
        merged
            .pointer(p)
            .and_then(|v| match v {
                Value::String(s) => Some(s.trim().to_string()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .filter(|s| !s.is_empty())
    };
    let port = match text("/service/http_port") {
        Some(p) => Some(p.parse::<u16>().map_err(|_| {
            Error::Invalid(format!("Qdrant's service.http_port is not a port: {p:?}"))
        })?),
        None => None,
    };
    let tls = match merged.pointer("/service/enable_tls") {
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) => Some(s.trim().eq_ignore_ascii_case("true")),
        _ => None,
    };
    Ok(QdrantConfig {
        api_key: text("/service/api_key"),
        read_only_api_key: text("/service/read_only_api_key"),
        http_port: port,
        enable_tls: tls,
        snapshots_path: text("/storage/snapshots_path"),
        files,
    })
}

/// Why the snapshots directory this process shares with Qdrant (`shared`,
/// as Qdrant sees it) is not where Qdrant writes its snapshots, if it is
/// not: Qdrant's `storage.snapshots_path` (`configured`, relative to
/// Qdrant's working folder, the parent of its `config/` folder
/// `config_dir`). `None` when they agree or either is unknown.
pub fn snapshots_elsewhere(
    configured: Option<&str>,
    config_dir: Option<&Path>,
    shared: Option<&Path>,
) -> Option<String> {
    let (configured, shared) = (configured?, shared?);
    let path = Path::new(configured);
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        config_dir?.parent()?.join(path)
    };
    let clean = |p: &Path| -> PathBuf {
        p.components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect()
    };
    let absolute = clean(&absolute);
    (absolute != clean(shared)).then(|| {
        format!(
            "Qdrant writes snapshots to {} (its storage.snapshots_path), not to {}, the directory this agent shares with it",
            absolute.display(),
            shared.display()
        )
    })
}

fn read(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Invalid(format!(
            "cannot read Qdrant's config file {}: {e}",
            path.display()
        ))
    })?;
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    // The error names the file and the line, never the content (it may
    // hold the API key).
    serde_yaml::from_str::<Value>(&text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" at line {}", l.line()))
            .unwrap_or_default();
        Error::Invalid(format!(
            "Qdrant's config file {} is not valid YAML{at}",
            path.display()
        ))
    })
}

/// Deep merge: objects key by key, anything else replaced.
fn merge(into: &mut Value, new: Value) {
    match (into, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(old) => merge(old, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn set(into: &mut Value, keys: &[String], value: Value) {
    let Some((last, path)) = keys.split_last() else {
        return;
    };
    let mut at = into;
    for k in path {
        if !at.get(k).is_some_and(Value::is_object) {
            if let Value::Object(m) = at {
                m.insert(k.clone(), Value::Object(Default::default()));
            } else {
                return;
            }
        }
        at = at.get_mut(k).expect("inserted above");
    }
    if let Value::Object(m) = at {
        m.insert(last.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    fn sources(d: &tempfile::TempDir) -> Sources {
        Sources {
            dir: Some(d.path().into()),
            run_mode: "production".into(),
            config_path: None,
        }
    }

    fn no_env() -> Vec<(String, String)> {
        vec![]
    }

    #[test]
    fn config_yaml_is_the_first_layer() {
        let d = dir_with(&[(
            "config.yaml",
            "service:\n  api_key: from-config\n  http_port: 7333\nstorage:\n  snapshots_path: ./snaps\n",
        )]);
        let c = load(&sources(&d), no_env()).unwrap();
        assert_eq!(c.api_key.as_deref(), Some("from-config"));
        assert_eq!(c.http_port, Some(7333));
        assert_eq!(c.snapshots_path.as_deref(), Some("./snaps"));
    }

    #[test]
    fn the_run_mode_file_overrides_config_yaml_key_by_key() {
        let d = dir_with(&[
            (
                "config.yaml",
                "service:\n  api_key: from-config\n  http_port: 7333\n",
            ),
            ("production.yaml", "service:\n  api_key: from-production\n"),
            (
                "development.yaml",
                "service:\n  api_key: from-development\n",
            ),
        ]);
        let c = load(&sources(&d), no_env()).unwrap();
        assert_eq!(c.api_key.as_deref(), Some("from-production"));
        assert_eq!(c.http_port, Some(7333), "kept from config.yaml");
        let dev = Sources {
            run_mode: "development".into(),
            ..sources(&d)
        };
        assert_eq!(
            load(&dev, no_env()).unwrap().api_key.as_deref(),
            Some("from-development")
        );
    }

    #[test]
    fn local_yaml_overrides_the_run_mode_file() {
        let d = dir_with(&[
            ("production.yaml", "service:\n  api_key: from-production\n"),
            ("local.yml", "service:\n  api_key: from-local\n"),
        ]);
        let c = load(&sources(&d), no_env()).unwrap();
        assert_eq!(c.api_key.as_deref(), Some("from-local"));
    }

    #[test]
    fn the_config_path_file_overrides_local_yaml() {
        let d = dir_with(&[
            ("local.yaml", "service:\n  api_key: from-local\n"),
            ("custom.yaml", "service:\n  api_key: from-custom\n"),
        ]);
        let s = Sources {
            config_path: Some(d.path().join("custom.yaml")),
            ..sources(&d)
        };
        assert_eq!(
            load(&s, no_env()).unwrap().api_key.as_deref(),
            Some("from-custom")
        );
    }

    #[test]
    fn environment_variables_override_every_file() {
        let d = dir_with(&[(
            "local.yaml",
            "service:\n  api_key: from-local\n  enable_tls: false\n",
        )]);
        let env = vec![
            (
                "QDRANT__SERVICE__API_KEY".to_string(),
                "from-env".to_string(),
            ),
            ("QDRANT__SERVICE__ENABLE_TLS".into(), "true".into()),
            ("QDRANT__SERVICE__HTTP_PORT".into(), "8333".into()),
            ("QDRANT_API_KEY".into(), "not-qdrants-own".into()),
        ];
        let c = load(&sources(&d), env).unwrap();
        assert_eq!(c.api_key.as_deref(), Some("from-env"));
        assert_eq!(c.enable_tls, Some(true));
        assert_eq!(c.http_port, Some(8333));
    }

    #[test]
    fn nothing_set_is_qdrants_defaults_and_a_broken_file_is_named_without_its_content() {
        let d = dir_with(&[]);
        assert_eq!(
            load(&sources(&d), no_env()).unwrap(),
            QdrantConfig::default()
        );
        let d = dir_with(&[("local.yaml", "service:\n  api_key: \"secret-k3y\n  x: [")]);
        let e = load(&sources(&d), no_env()).unwrap_err().to_string();
        assert!(
            e.contains("local.yaml") && e.contains("not valid YAML"),
            "{e}"
        );
        assert!(!e.contains("secret-k3y"), "{e}");
    }

    #[test]
    fn a_snapshots_path_elsewhere_than_the_shared_directory_is_named() {
        let cfg = Some(Path::new("/qdrant/config"));
        let shared = Some(Path::new("/qdrant/snapshots"));
        for same in [
            "./snapshots",
            "snapshots",
            "/qdrant/snapshots",
            "/qdrant/snapshots/",
        ] {
            assert_eq!(snapshots_elsewhere(Some(same), cfg, shared), None, "{same}");
        }
        let why = snapshots_elsewhere(Some("/data/snaps"), cfg, shared).unwrap();
        assert!(
            why.contains("/data/snaps") && why.contains("/qdrant/snapshots"),
            "{why}"
        );
        assert!(
            snapshots_elsewhere(Some("./other"), cfg, shared)
                .unwrap()
                .contains("/qdrant/other")
        );
        // Unknown: nothing configured, nothing shared, or a relative path
        // without Qdrant's folder.
        assert_eq!(snapshots_elsewhere(None, cfg, shared), None);
        assert_eq!(snapshots_elsewhere(Some("/x"), cfg, None), None);
        assert_eq!(snapshots_elsewhere(Some("./x"), None, shared), None);
    }

    /// The files Qdrant's Helm chart (1.19.0) renders, as the agent sees
    /// them mounted: `production.yaml` from its ConfigMap (its `config:`
    /// values) and `local.yaml` from its Secret (`apiKey: true`).
    #[test]
    fn the_files_qdrants_chart_renders() {
        let production = "cluster:\n  consensus:\n    tick_period_ms: 100\n  enabled: true\n  p2p:\n    enable_tls: false\n    port: 6335\nservice:\n  enable_tls: false\n";
        let local = "service:\n  api_key: Zq3kXbP8\n";
        let d = dir_with(&[("production.yaml", production), ("local.yaml", local)]);
        let c = load(&sources(&d), no_env()).unwrap();
        assert_eq!(c.api_key.as_deref(), Some("Zq3kXbP8"));
        assert_eq!(c.enable_tls, Some(false));
        // The key in `config.service.api_key` instead: production.yaml.
        let production = format!("{production}  api_key: in-values\n");
        let d = dir_with(&[("production.yaml", production.as_str())]);
        let c = load(&sources(&d), no_env()).unwrap();
        assert_eq!(c.api_key.as_deref(), Some("in-values"));
    }
}
