//! The agent sidecar container, as both the cluster renderer and the
//! injection webhook wire it into a Qdrant pod. Pure.

use crate::names::{AGENT_CONTAINER, AGENT_TOKEN_KEY};
use k8s_openapi::api::core::v1::*;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

pub const AGENT_TOKEN_DIR: &str = "/var/run/qdrant-agent";
pub const AGENT_TLS_DIR: &str = "/var/run/qdrant-agent-tls";
/// Memory the agent needs beyond its transfer budget (runtime, TLS, gRPC).
pub const AGENT_MEMORY_OVERHEAD_MIB: u32 = 64;

/// How an agent sidecar is wired into a pod: to a QdrantCluster's pods by
/// the renderer, to other Qdrant pods by the injection webhook.
pub struct AgentWiring {
    pub image: String,
    /// gRPC port; plaintext health answers on the next one.
    pub port: i32,
    pub memory_budget_mib: u32,
    /// Replaces the default resources (budget plus overhead) whole.
    pub resources: Option<ResourceRequirements>,
    /// How the agent gets Qdrant's API key: `QDRANT_API_KEY`, or
    /// Qdrant's own `QDRANT__*` variables and config files (`QDRANT_CONFIG_DIR`).
    pub env: Vec<EnvVar>,
    /// Mounts besides the snapshots, token and TLS (e.g. that config file).
    pub extra_mounts: Vec<VolumeMount>,
    pub qdrant_http_port: i32,
    /// Qdrant's snapshots volume, mounted where Qdrant has it.
    pub snapshots: VolumeMount,
    /// That volume's `sizeLimit` (an emptyDir's), which auto mode respects.
    pub snapshots_size_limit: Option<String>,
    /// Qdrant's storage volume, mounted read-only where Qdrant has it, so
    /// the agent can tell its disk's free space before a scale-in.
    pub storage: Option<VolumeMount>,
    /// Serve the agent's metrics on the port after its health port.
    pub metrics: bool,
    pub token_volume: String,
    pub tls_volume: String,
    pub security_context: SecurityContext,
}

/// The agent container. Its readiness is gRPC health, which needs no token.
pub fn agent_sidecar(w: &AgentWiring) -> Container {
    let mut env = vec![EnvVar {
        name: "NODE_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }];
    env.extend(w.env.iter().cloned());
    env.push(EnvVar {
        name: "QDRANT_AGENT_LOG_FORMAT".into(),
        value: Some("json".into()),
        ..Default::default()
    });
    // Settings newer than some agents are variables, not flags: an agent
    // image that predates one ignores it instead of refusing to start.
    if let Some(m) = &w.storage {
        env.push(EnvVar {
            name: "QDRANT_STORAGE_DIR".into(),
            value: Some(m.mount_path.clone()),
            ..Default::default()
        });
    }
    if w.metrics {
        env.push(EnvVar {
            name: "QDRANT_AGENT_METRICS_LISTEN".into(),
            value: Some(format!("0.0.0.0:{}", w.port + 2)),
            ..Default::default()
        });
    }
    env.push(EnvVar {
        name: "QDRANT_AGENT_MEMORY_BUDGET".into(),
        value: Some(format!("{}MiB", w.memory_budget_mib)),
        ..Default::default()
    });
    // The budget plus what the agent needs besides its part buffers.
    let memory = Quantity(format!(
        "{}Mi",
        w.memory_budget_mib + AGENT_MEMORY_OVERHEAD_MIB
    ));
    let resources = w.resources.clone().unwrap_or_else(|| ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("50m".into())),
            ("memory".into(), memory.clone()),
        ])),
        limits: Some(BTreeMap::from([("memory".into(), memory)])),
        ..Default::default()
    });
    let snapshots_dir = w.snapshots.mount_path.clone();
    Container {
        name: AGENT_CONTAINER.into(),
        image: Some(w.image.clone()),
        args: Some(
            [
                "serve",
                "--listen",
                &format!("0.0.0.0:{}", w.port),
                "--qdrant-url",
                &format!("http://127.0.0.1:{}", w.qdrant_http_port),
                "--snapshots-dir",
                &snapshots_dir,
                "--token-file",
                &format!("{AGENT_TOKEN_DIR}/{AGENT_TOKEN_KEY}"),
                "--tls-cert",
                &format!("{AGENT_TLS_DIR}/tls.crt"),
                "--tls-key",
                &format!("{AGENT_TLS_DIR}/tls.key"),
                "--tls-client-ca",
                &format!("{AGENT_TLS_DIR}/ca.crt"),
                "--health-listen",
                &format!("0.0.0.0:{}", w.port + 1),
                "--wait-for-credentials",
            ]
            .map(String::from)
            .into_iter()
            .chain(
                w.snapshots_size_limit
                    .iter()
                    .flat_map(|l| ["--snapshots-size-limit".to_string(), l.clone()]),
            )
            .collect(),
        ),
        ports: Some(
            std::iter::once(ContainerPort {
                name: Some("agent".into()),
                container_port: w.port,
                ..Default::default()
            })
            // Prometheus metrics, plain HTTP (no client certificate).
            .chain(w.metrics.then(|| ContainerPort {
                name: Some("agent-metrics".into()),
                container_port: w.port + 2,
                ..Default::default()
            }))
            .collect(),
        ),
        env: Some(env),
        resources: Some(resources),
        volume_mounts: Some(
            [
                w.snapshots.clone(),
                VolumeMount {
                    read_only: Some(true),
                    ..mount(&w.token_volume, AGENT_TOKEN_DIR)
                },
                VolumeMount {
                    read_only: Some(true),
                    ..mount(&w.tls_volume, AGENT_TLS_DIR)
                },
            ]
            .into_iter()
            .chain(w.storage.iter().map(|m| VolumeMount {
                read_only: Some(true),
                ..m.clone()
            }))
            .chain(w.extra_mounts.iter().cloned())
            .collect(),
        ),
        // No probe: a pod is Ready only when all its containers are, and
        // Qdrant's traffic must never depend on the backup sidecar. The
        // controller checks each agent over gRPC before it uses it, and
        // its health (plaintext, on the next port) is there for grpcurl.
        security_context: Some(w.security_context.clone()),
        ..Default::default()
    }
}

/// The agent's Secret volume, of `mode` (0400 where the pod has an
/// fsGroup, which the kubelet makes the files' group). Optional: a missing Secret
/// must never keep the pod, and so Qdrant, from starting; the agent waits
/// for the files (`--wait-for-credentials`).
pub fn secret_volume(name: &str, secret: String, mode: i32) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            default_mode: Some(mode),
            optional: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The wiring of an agent container as rendered (see [`agent_wiring`]).
pub fn wiring_of(agent: &Container) -> u32 {
    let has = |name: &str| agent.env.iter().flatten().any(|e| e.name == name);
    u32::from(has("QDRANT_STORAGE_DIR"))
}

/// A container that may do nothing but run as `user`/`group`: no
/// privilege, no capability, a read-only root filesystem.
pub fn restricted_as(user: Option<i64>, group: Option<i64>) -> SecurityContext {
    SecurityContext {
        run_as_non_root: user.map(|u| u != 0),
        run_as_user: user,
        run_as_group: group,
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    }
}
