//! `QdrantCluster`: Qdrant run as a StatefulSet, with the agent as a sidecar.

use super::SecretKeyRef;
use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A Qdrant cluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "qdrant.io",
    version = "v1alpha1",
    kind = "QdrantCluster",
    namespaced,
    status = "QdrantClusterStatus",
    shortname = "qc",
    category = "qdrant",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Last Backup","type":"date","jsonPath":".status.lastBackupTime","description":"when its latest Completed backup finished"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.replicas <= 1 || self.cluster.enabled").message("replicas > 1 needs cluster.enabled: true (distributed mode)"))]
#[serde(rename_all = "camelCase")]
pub struct QdrantClusterSpec {
    /// Number of Qdrant nodes.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// Qdrant version: the image tag, e.g. `v1.18.3`.
    #[schemars(regex(pattern = r"^v?[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$"))]
    pub version: String,
    /// Image repository (default `qdrant/qdrant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Resources of the Qdrant container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub persistence: Persistence,
    #[serde(default)]
    pub cluster: ClusterMode,
    /// Qdrant's API key (and optionally a read-only key), from Secrets in
    /// the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKey>,
    #[serde(default)]
    pub metrics: Metrics,
    /// How pods are restarted for a change of their template (version,
    /// config, image, keys, resources): one at a time, each only once the
    /// shards it holds have an Active replica elsewhere.
    #[serde(default)]
    pub update_strategy: UpdateStrategy,
    /// Extra Qdrant configuration merged into the generated config file
    /// (same shape as Qdrant's `config.yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub config: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// The most Qdrant's snapshots volume (an emptyDir) may hold, e.g.
    /// `20Gi`: past it the kubelet evicts the pod. The agent's `auto` mode
    /// writes a shard's snapshot there only when it fits under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|Ti)?$"))]
    pub snapshots_size_limit: Option<String>,
    /// Secrets (same namespace) to pull Qdrant's and the agent's images with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<super::LocalObjectReference>,
    #[serde(default)]
    pub agent: AgentSpec,
}

fn one() -> i32 {
    1
}

/// An object whose fields are kept as given.
fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Storage of each Qdrant node. The size may grow (the operator expands each
/// volume claim, where the storage class allows it) but never shrink; the
/// storage class is fixed once the cluster exists.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new("quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0").message("persistence.size cannot shrink: volumes only grow; to use smaller volumes, restore a backup into a new QdrantCluster"))]
#[x_kube(validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)").message("persistence.storageClassName cannot change on an existing cluster; restore a backup into a new QdrantCluster with the new class instead"))]
#[serde(rename_all = "camelCase")]
pub struct Persistence {
    /// Size of each node's volume, e.g. `50Gi`.
    #[serde(default = "default_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Delete the volumes when the QdrantCluster is deleted (default: keep).
    #[serde(default)]
    pub delete_claims_on_delete: bool,
}

fn default_size() -> String {
    "10Gi".into()
}

impl Default for Persistence {
    fn default() -> Self {
        Self {
            size: default_size(),
            storage_class_name: None,
            delete_claims_on_delete: false,
        }
    }
}

/// Distributed mode.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMode {
    /// Run Qdrant in distributed mode (required for more than one replica).
    #[serde(default)]
    pub enabled: bool,
    /// Port of Qdrant's peer-to-peer traffic.
    #[serde(default = "default_p2p_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub p2p_port: i32,
    /// When the node count changes, move shard replicas (one at a time,
    /// through the agent) until every node holds a fair share: Qdrant puts
    /// nothing on a new node by itself.
    #[serde(default = "yes")]
    pub rebalance: bool,
}

fn default_p2p_port() -> i32 {
    6335
}

impl Default for ClusterMode {
    fn default() -> Self {
        Self {
            enabled: false,
            p2p_port: default_p2p_port(),
            rebalance: true,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    /// The full API key (needed by the agent to restore).
    pub secret_ref: SecretKeyRef,
    /// An optional read-only API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_secret_ref: Option<SecretKeyRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// Annotate pods for Prometheus scraping of Qdrant's `/metrics`
    /// (`prometheus.io/scrape`; such a scrape sends no API key, so Qdrant
    /// answers it 401 when `apiKey` is set: use `podMonitor` then).
    #[serde(default)]
    pub enabled: bool,
    /// A Prometheus Operator PodMonitor for the cluster's pods: Qdrant's
    /// `/metrics`, authenticated with the cluster's API key (its read-only
    /// key when it has one), and each agent's metrics port.
    #[serde(default)]
    pub pod_monitor: PodMonitor,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PodMonitor {
    /// Create the PodMonitor (named after the cluster, owned by it). Needs
    /// the Prometheus Operator's CRDs; without them the `Monitored`
    /// condition says so and the cluster runs on.
    #[serde(default)]
    pub enabled: bool,
    /// Labels of the PodMonitor, for a Prometheus' `podMonitorSelector`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Scrape interval, e.g. `30s` (default: the Prometheus' own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
    ))]
    pub interval: Option<String>,
}

/// How the operator restarts pods for a new template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// What to do with a pod that holds the only Active replica of a shard
    /// (a collection of replication factor 1): `Restart` it anyway (that
    /// shard is unavailable for the restart; a Warning Event names it), or
    /// `Wait` until another replica is Active (the Progressing condition
    /// names the shards).
    #[serde(default)]
    pub single_replica: SingleReplica,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SingleReplica {
    #[default]
    Restart,
    Wait,
}

/// The backup agent sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Run the agent beside each Qdrant node (needed for backups).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Agent image (default: the operator's matching agent image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Default: memory requested and limited to `memoryBudgetMiB` + 64 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// MiB all of the agent's transfers may hold at once (part buffers):
    /// parts wait for room, so large shards never need more.
    #[serde(default = "default_memory_budget", rename = "memoryBudgetMiB")]
    #[schemars(range(min = 16, max = 65536))]
    pub memory_budget_mib: u32,
    /// gRPC port of the agent.
    #[serde(default = "default_agent_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

fn yes() -> bool {
    true
}

fn default_agent_port() -> i32 {
    50051
}

fn default_memory_budget() -> u32 {
    256
}

impl Default for AgentSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            image: None,
            resources: None,
            memory_budget_mib: default_memory_budget(),
            port: default_agent_port(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ClusterPhase {
    Pending,
    Running,
    Upgrading,
    Scaling,
    Degraded,
    Failed,
    Terminating,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QdrantClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClusterPhase>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Version all nodes run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The agent image the pods run. It stays when the operator is upgraded
    /// (an upgrade must not restart every Qdrant pod); `spec.agent.image`,
    /// or the annotation `qdrant.io/upgrade-agent: "true"`, changes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_image: Option<String>,
    /// How its agent sidecars are wired (which of the operator's sidecar
    /// features they have): kept across operator upgrades, as the image is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_wiring: Option<u32>,
    /// In-cluster URL of Qdrant's REST API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// When the latest Completed QdrantBackup of this cluster finished (as
    /// of the cluster's latest reconcile: within five minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Ready, Progressing, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// A scale-in in progress: the pods that leave are emptied (their
    /// shard replicas moved to the pods that stay) before the StatefulSet
    /// shrinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_in: Option<ScaleIn>,
    /// Evening out the shard replicas over the nodes, after the node count
    /// changed (`spec.cluster.rebalance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<Rebalance>,
}

/// Shard replicas moved until every node holds a fair share.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rebalance {
    /// The node count the replicas are (being) evened out for.
    pub replicas: i32,
    /// Done for that count.
    #[serde(default)]
    pub done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<super::AgentTask>,
    #[serde(default)]
    pub shards_moved: u32,
    #[serde(default)]
    pub shards_to_move: u32,
    /// Why it waits or failed, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A failed attempt is tried again from this time on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// A scale-in from `from` to `to` pods, as the agent that drives it reports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleIn {
    pub from: i32,
    pub to: i32,
    pub state: ScaleInState,
    /// The agent task that moves the shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<super::AgentTask>,
    /// Qdrant peer ids of the pods that leave, and of those that stay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaving_peers: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub staying_peers: Vec<u64>,
    /// Shard replicas moved or dropped so far, out of `shardsToMove`.
    #[serde(default)]
    pub shards_moved: u32,
    #[serde(default)]
    pub shards_to_move: u32,
    /// Why it is refused or failed, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The spec generation it was refused for: a new spec tries again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// A refused scale-in is looked at again from this time on (the
    /// collection that stood in its way may have changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ScaleInState {
    /// Shard replicas are being moved off the pods that leave.
    MovingShards,
    /// Their peers are empty and removed: the StatefulSet shrinks.
    Drained,
    /// It cannot be done as asked (the message says why); nothing moved.
    Refused,
}
