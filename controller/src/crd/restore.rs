//! `QdrantRestore`: restore a backup, or a raw S3 path, into a cluster.

use super::{
    AgentTask, ClusterReference, CollectionResult, LocalObjectReference, OperationPhase, S3Storage,
    TaskProgress,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A restore of a backup into a QdrantCluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "qdrant.io",
    version = "v1alpha1",
    kind = "QdrantRestore",
    namespaced,
    status = "QdrantRestoreStatus",
    shortname = "qr",
    category = "qdrant",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.targetClusterRef.name"}"#,
    printcolumn = r#"{"name":"Backup","type":"string","jsonPath":".spec.backupRef.name"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","description":"why it waits or failed (kubectl describe says more)"}"#,
    printcolumn = r#"{"name":"Duration","type":"string","jsonPath":".status.duration"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.backupRef) != has(self.source)").message("give exactly one of backupRef or source"))]
#[x_kube(validation = Rule::new("self == oldSelf").message("a restore cannot be changed once created; create a new one"))]
#[serde(rename_all = "camelCase")]
pub struct QdrantRestoreSpec {
    /// A Completed QdrantBackup in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_ref: Option<LocalObjectReference>,
    /// A backup found in a bucket, for example one whose QdrantBackup
    /// resource or cluster is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RestoreSource>,
    /// The QdrantCluster (or StatefulSet with the injected agent) to
    /// restore into, in the same namespace.
    pub target_cluster_ref: ClusterReference,
    /// Collections to restore; empty means all in the backup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collections: Vec<String>,
    /// Restore collection KEY under the name VALUE.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub collection_mapping: BTreeMap<String, String>,
    /// Read every object once to check its sha256 before touching Qdrant.
    /// Without it each object is hashed while it streams into Qdrant, which
    /// checks that sha256 before it recovers anything (half the reads).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify_first: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct RestoreSource {
    pub s3: S3Source,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Source {
    /// Bucket, endpoint, region and credentials, as for a backup; `prefix`
    /// is ignored in favour of `path`.
    #[serde(flatten)]
    pub storage: S3Storage,
    /// Key of the backup's directory: the one holding `manifest.json`.
    #[schemars(length(min = 1))]
    pub path: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QdrantRestoreStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<OperationPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// How long it took, from start to end (e.g. `2m30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<TaskProgress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collections: Vec<CollectionResult>,
    /// Where the restore stands: Verify (check the backup and create the
    /// collections), Upload (one task per pod), Finish (aliases, wait for
    /// green), Done; All when a single-node target does everything in one
    /// task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<RestoreStage>,
    /// The agents' tasks of the current stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<AgentTask>,
    /// Collections this restore created, as its agents reported them. Each
    /// carries the restore's UID in its metadata (`qdrant-agent/restore`)
    /// until the restore completes; a failed restore deletes only
    /// collections that carry it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created_collections: Vec<String>,
    /// Source: `s3://bucket/path` of the backup being restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RestoreStage {
    All,
    Verify,
    Upload,
    Finish,
    Done,
    /// The restore failed: the collections it created are being deleted
    /// (retried until done), then it ends Failed.
    RollingBack,
}
