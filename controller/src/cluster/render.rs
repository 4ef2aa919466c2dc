//! Pure builders of every object a `QdrantCluster` owns. No I/O: the
//! reconciler applies what these return with server-side apply.

pub use super::config::{ANN_CONFIG, config_hash, config_map, qdrant_config, start_script};
use crate::crd::QdrantCluster;
pub use crate::names::{
    AGENT_CONTAINER, AGENT_TOKEN_KEY, Names, SNAPSHOTS_PATH, STORAGE_PATH, selector_labels,
};
pub use crate::settings::{DEFAULT_IMAGE, Images, default_agent_image};
use crate::sidecar::mount;
pub use crate::sidecar::{
    AGENT_MEMORY_OVERHEAD_MIB, AGENT_TLS_DIR, AGENT_TOKEN_DIR, AgentWiring, agent_sidecar,
    restricted_as, secret_volume, wiring_of,
};
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::*;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use std::collections::BTreeMap;

pub const HTTP_PORT: i32 = 6333;
pub const GRPC_PORT: i32 = 6334;
pub const QDRANT_UID: i64 = 1000;
pub const QDRANT_GID: i64 = 2000;
pub const FS_GROUP: i64 = 3000;
fn labels(c: &QdrantCluster) -> BTreeMap<String, String> {
    let mut l = selector_labels(c);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "qdrant-operator".into(),
    );
    l
}

fn owner(c: &QdrantCluster) -> Vec<OwnerReference> {
    c.controller_owner_ref(&()).into_iter().collect()
}

pub(super) fn meta(c: &QdrantCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: c.metadata.namespace.clone(),
        labels: Some(labels(c)),
        owner_references: Some(owner(c)),
        ..Default::default()
    }
}

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(port)),
        ..Default::default()
    }
}

/// Peer discovery: one DNS name per pod, ready or not (Qdrant peers must
/// find each other before they are ready).
pub fn headless_service(c: &QdrantCluster) -> Service {
    let mut ports = vec![port("http", HTTP_PORT), port("grpc", GRPC_PORT)];
    if c.spec.cluster.enabled {
        ports.push(port("p2p", c.spec.cluster.p2p_port));
    }
    if c.spec.agent.enabled {
        ports.push(port("agent", c.spec.agent.port));
    }
    Service {
        metadata: meta(c, Names::of(c).headless()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(c)),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What applications connect to: REST and gRPC.
pub fn client_service(c: &QdrantCluster) -> Service {
    Service {
        metadata: meta(c, Names::of(c).client_service()),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(c)),
            ports: Some(vec![port("http", HTTP_PORT), port("grpc", GRPC_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Qdrant pods run with no Kubernetes API access at all.
pub fn service_account(c: &QdrantCluster) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(c, Names::of(c).service_account()),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

pub fn pod_disruption_budget(c: &QdrantCluster) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(c, Names::of(c).pdb()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            // A pod that is not Ready serves nothing: evicting it (a node
            // drain) must not wait for it to become Ready first.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(c)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Metadata of an object the cluster owns.
pub fn owned_meta(c: &QdrantCluster, name: String) -> ObjectMeta {
    meta(c, name)
}

/// The agent's bearer token, shared by the agents and the controller.
pub fn agent_token_secret(metadata: ObjectMeta, token: &str) -> Secret {
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(AGENT_TOKEN_KEY.into(), token.into())])),
        ..Default::default()
    }
}

/// The agents' TLS material: their server certificate for the pods' DNS
/// names and the CA that client certificates must chain to. Annotations say
/// which CA signed it and until when, for renewal.
pub fn agent_tls_secret(mut m: ObjectMeta, leaf: &crate::pki::Leaf, ca: &crate::pki::Ca) -> Secret {
    m.annotations.get_or_insert_with(Default::default).extend([
        (crate::pki::ANN_CA.into(), ca.fingerprint()),
        (crate::pki::ANN_NOT_AFTER.into(), leaf.not_after.to_string()),
    ]);
    // `data`, not the write-only `stringData`: this Secret is server-side
    // applied, and `data` is what the API server stores and compares.
    let bytes = |s: &str| k8s_openapi::ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: m,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".into(), bytes(&leaf.cert_pem)),
            ("tls.key".into(), bytes(&leaf.key_pem)),
            ("ca.crt".into(), bytes(&ca.cert_pem)),
        ])),
        ..Default::default()
    }
}

/// Plaintext gRPC health of the agent, for kubelet probes.
pub fn agent_health_port(c: &QdrantCluster) -> i32 {
    c.spec.agent.port + 1
}

fn secret_env(name: &str, secret: &crate::crd::SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn restricted() -> SecurityContext {
    restricted_as(Some(QDRANT_UID), Some(QDRANT_GID))
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(HTTP_PORT),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn qdrant_container(c: &QdrantCluster, images: &Images) -> Container {
    let s = &c.spec;
    let mut ports = vec![
        ContainerPort {
            name: Some("http".into()),
            container_port: HTTP_PORT,
            ..Default::default()
        },
        ContainerPort {
            name: Some("grpc".into()),
            container_port: GRPC_PORT,
            ..Default::default()
        },
    ];
    if s.cluster.enabled {
        ports.push(ContainerPort {
            name: Some("p2p".into()),
            container_port: s.cluster.p2p_port,
            ..Default::default()
        });
    }
    // Qdrant writes an "initialized" marker; the root filesystem is read-only.
    let mut env = vec![EnvVar {
        name: "QDRANT_INIT_FILE_PATH".into(),
        value: Some("/qdrant/init/.qdrant-initialized".into()),
        ..Default::default()
    }];
    if let Some(k) = &s.api_key {
        env.push(secret_env("QDRANT__SERVICE__API_KEY", &k.secret_ref));
        if let Some(ro) = &k.read_only_secret_ref {
            env.push(secret_env("QDRANT__SERVICE__READ_ONLY_API_KEY", ro));
        }
    }
    let config = VolumeMount {
        sub_path: Some("production.yaml".into()),
        ..mount("config", "/qdrant/config/production.yaml")
    };
    let script = VolumeMount {
        sub_path: Some("start.sh".into()),
        ..mount("config", "/qdrant/start.sh")
    };
    Container {
        name: "qdrant".into(),
        image: Some(format!(
            "{}:{}",
            s.image.as_deref().unwrap_or(&images.qdrant),
            s.version
        )),
        command: Some(vec!["/bin/bash".into(), "/qdrant/start.sh".into()]),
        ports: Some(ports),
        env: Some(env),
        resources: s.resources.clone(),
        volume_mounts: Some(vec![
            mount("storage", STORAGE_PATH),
            mount("snapshots", SNAPSHOTS_PATH),
            config,
            script,
            mount("init", "/qdrant/init"),
            mount("tmp", "/tmp"),
        ]),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/livez", 10, 6)),
        // Loading a large collection can take long: no liveness until up.
        startup_probe: Some(http_probe("/livez", 10, 60)),
        security_context: Some(restricted()),
        ..Default::default()
    }
}

/// The agent image a cluster's pods run: its `spec.agent.image`; else the
/// one its pods run now (an operator upgrade changes no running cluster),
/// unless the annotation `qdrant.io/upgrade-agent: "true"` asks for the
/// operator's; else the operator's.
pub fn agent_image(c: &QdrantCluster, images: &Images) -> String {
    let upgrade = upgrade_requested(c);
    c.spec
        .agent
        .image
        .clone()
        .or_else(|| {
            (!upgrade)
                .then(|| c.status.as_ref()?.agent_image.clone())
                .flatten()
        })
        .unwrap_or_else(|| images.agent.clone())
}

/// Whether the cluster asks to move to the operator's agent
/// (`qdrant.io/upgrade-agent: "true"`).
fn upgrade_requested(c: &QdrantCluster) -> bool {
    c.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_UPGRADE_AGENT))
        .is_some_and(|v| v == "true")
}

/// How the agent sidecar is wired, by operator version: 0 before the
/// read-only storage mount (the disk check before a scale-in) and the
/// metrics port, 1 with them.
pub const AGENT_WIRING: u32 = 1;

/// The wiring a cluster's sidecars get. What a new operator version adds
/// reaches a cluster only with a change that rolls its pods anyway (its
/// move to the operator's agent image, or a new `spec.agent.image`), or
/// when it is new: an operator upgrade alone changes no pod template.
pub fn agent_wiring(c: &QdrantCluster) -> u32 {
    let upgrade = upgrade_requested(c);
    let status = c.status.as_ref();
    let running = status.and_then(|s| s.agent_image.as_ref());
    let new_image = c.spec.agent.image.is_some() && c.spec.agent.image.as_ref() != running;
    match running {
        Some(_) if !upgrade && !new_image => status.and_then(|s| s.agent_wiring).unwrap_or(0),
        _ => AGENT_WIRING,
    }
}

/// The pod template's digest of Qdrant's API keys: Qdrant reads them only
/// at start, so a new key rolls the pods.
pub const ANN_API_KEY: &str = "qdrant.io/api-key-sha256";

/// The annotation that moves a cluster's agents to the operator's image.
pub const ANN_UPGRADE_AGENT: &str = "qdrant.io/upgrade-agent";

fn agent_container(c: &QdrantCluster, images: &Images) -> Container {
    let a = &c.spec.agent;
    let current = agent_wiring(c) >= 1;
    agent_sidecar(&AgentWiring {
        image: agent_image(c, images),
        port: a.port,
        memory_budget_mib: a.memory_budget_mib,
        resources: a.resources.clone(),
        env: c
            .spec
            .api_key
            .as_ref()
            .map(|k| secret_env("QDRANT_API_KEY", &k.secret_ref))
            .into_iter()
            .collect(),
        extra_mounts: vec![],
        qdrant_http_port: HTTP_PORT,
        snapshots: mount("snapshots", SNAPSHOTS_PATH),
        snapshots_size_limit: c.spec.snapshots_size_limit.clone(),
        storage: current.then(|| mount("storage", STORAGE_PATH)),
        metrics: current,
        token_volume: "agent-token".into(),
        tls_volume: "agent-tls".into(),
        security_context: restricted(),
    })
}

/// Sets the storage request of the `storage` claim template.
pub fn set_claim_size(spec: &mut StatefulSetSpec, size: &str) {
    let requests = spec
        .volume_claim_templates
        .iter_mut()
        .flatten()
        .filter(|t| t.metadata.name.as_deref() == Some("storage"))
        .filter_map(|t| t.spec.as_mut()?.resources.as_mut()?.requests.as_mut());
    for r in requests {
        r.insert("storage".into(), Quantity(size.into()));
    }
}

pub fn statefulset(c: &QdrantCluster, images: &Images) -> StatefulSet {
    let s = &c.spec;
    let n = Names::of(c);
    let mut containers = vec![qdrant_container(c, images)];
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: n.config(),
                ..Default::default()
            }),
            ..Default::default()
        },
        // Collection snapshots (FILE mode) pass through here; the live
        // shard stream needs no disk.
        Volume {
            name: "snapshots".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: s.snapshots_size_limit.clone().map(Quantity),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "init".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ];
    if s.agent.enabled {
        containers.push(agent_container(c, images));
        volumes.push(secret_volume("agent-token", n.agent_token(), 0o400));
        volumes.push(secret_volume("agent-tls", n.agent_tls(), 0o400));
    }
    let mut annotations = BTreeMap::new();
    // The config is mounted by subPath, which a running pod never re-reads:
    // a change to it changes the template, and the pods roll.
    annotations.insert(ANN_CONFIG.into(), config_hash(c));
    if s.metrics.enabled {
        annotations.insert("prometheus.io/scrape".into(), "true".into());
        annotations.insert("prometheus.io/port".into(), HTTP_PORT.to_string());
        annotations.insert("prometheus.io/path".into(), "/metrics".into());
    }
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("storage".into()),
            labels: Some(selector_labels(c)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: s.persistence.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    Quantity(s.persistence.size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    StatefulSet {
        metadata: meta(c, n.statefulset()),
        spec: Some(StatefulSetSpec {
            replicas: Some(s.replicas),
            service_name: Some(n.headless()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(c)),
                ..Default::default()
            },
            // The operator restarts the pods itself (`roll`), one at a
            // time, each once its shards have an Active replica elsewhere.
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..Default::default()
            }),
            // Distributed Qdrant pods are Ready only once their peers run:
            // started one by one (OrderedReady), a cluster whose pods all
            // restart together never comes back. Qdrant's chart uses
            // Parallel too; a one-node cluster has it as well, so it can
            // become distributed (the field is immutable).
            pod_management_policy: Some("Parallel".into()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(c)),
                    annotations: (!annotations.is_empty()).then_some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(n.service_account()),
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(QDRANT_UID),
                        run_as_group: Some(QDRANT_GID),
                        fs_group: Some(FS_GROUP),
                        fs_group_change_policy: Some("OnRootMismatch".into()),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers,
                    volumes: Some(volumes),
                    node_selector: (!s.node_selector.is_empty()).then(|| s.node_selector.clone()),
                    tolerations: (!s.tolerations.is_empty()).then(|| s.tolerations.clone()),
                    affinity: Some(s.affinity.clone().unwrap_or_else(|| spread(c))),
                    image_pull_secrets: (!s.image_pull_secrets.is_empty()).then(|| {
                        s.image_pull_secrets
                            .iter()
                            .map(|r| k8s_openapi::api::core::v1::LocalObjectReference {
                                name: r.name.clone(),
                            })
                            .collect()
                    }),
                    topology_spread_constraints: (!s.topology_spread_constraints.is_empty())
                        .then(|| s.topology_spread_constraints.clone()),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![claim]),
            // Data outlives the resource unless the user asked otherwise.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(
                        if s.persistence.delete_claims_on_delete {
                            "Delete"
                        } else {
                            "Retain"
                        }
                        .into(),
                    ),
                    // A pod removed by a scale-in was emptied and its
                    // peer left Qdrant's cluster first (`scale`): its
                    // volume holds nothing a node could come back with.
                    when_scaled: Some("Delete".into()),
                },
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The default affinity: nodes of one cluster on different machines where
/// the scheduler can (a machine lost takes one replica, not all of them),
/// but never left Pending for it.
fn spread(c: &QdrantCluster) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(c)),
                            ..Default::default()
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// In-cluster URL of the cluster's REST API.
pub fn endpoint(c: &QdrantCluster) -> String {
    format!(
        "http://{}.{}.svc:{HTTP_PORT}",
        Names::of(c).client_service(),
        c.metadata.namespace.as_deref().unwrap_or("default")
    )
}
