//! `QdrantBackup`: a point-in-time backup of a cluster's collections to S3.

use super::{
    AgentTask, BackupMode, BackupStorage, ClusterReference, CollectionResult, DeletionPolicy,
    OperationPhase, S3Storage, TaskProgress,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A backup of a QdrantCluster's collections, taken by the agents.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "qdrant.io",
    version = "v1alpha1",
    kind = "QdrantBackup",
    namespaced,
    status = "QdrantBackupStatus",
    shortname = "qb",
    category = "qdrant",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterRef.name"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","description":"why it waits or failed (kubectl describe says more)"}"#,
    printcolumn = r#"{"name":"Shards","type":"string","jsonPath":".status.progress.shardsDone","priority":1}"#,
    printcolumn = r#"{"name":"Size","type":"integer","format":"int64","jsonPath":".status.sizeBytes"}"#,
    printcolumn = r#"{"name":"Duration","type":"string","jsonPath":".status.duration"}"#,
    printcolumn = r#"{"name":"Completed","type":"date","jsonPath":".status.completionTime","description":"when it ended"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
// What was backed up and where it lives cannot change: deleting the backup,
// or restoring it by backupRef, must act on what it wrote.
#[x_kube(validation = Rule::new("self.clusterRef == oldSelf.clusterRef").message("spec.clusterRef cannot change: it names the cluster this backup holds; create a new QdrantBackup"))]
#[x_kube(validation = Rule::new("(has(self.collections) ? self.collections : []) == (has(oldSelf.collections) ? oldSelf.collections : [])").message("spec.collections cannot change: they are what this backup holds; create a new QdrantBackup"))]
#[x_kube(validation = Rule::new("(has(self.mode) ? self.mode : 'Auto') == (has(oldSelf.mode) ? oldSelf.mode : 'Auto')").message("spec.mode cannot change once the backup is created; create a new QdrantBackup"))]
#[x_kube(validation = Rule::new("self.storage.s3.bucket == oldSelf.storage.s3.bucket && (has(self.storage.s3.prefix) ? self.storage.s3.prefix : '') == (has(oldSelf.storage.s3.prefix) ? oldSelf.storage.s3.prefix : '') && (has(self.storage.s3.endpoint) ? self.storage.s3.endpoint : '') == (has(oldSelf.storage.s3.endpoint) ? oldSelf.storage.s3.endpoint : '')").message("spec.storage.s3 bucket, prefix and endpoint cannot change: they say where this backup lives (credentials, region and encryption may); create a new QdrantBackup to write elsewhere"))]
#[serde(rename_all = "camelCase")]
pub struct QdrantBackupSpec {
    /// The QdrantCluster (or StatefulSet with the injected agent) to back
    /// up, in the same namespace.
    pub cluster_ref: ClusterReference,
    pub storage: BackupStorage,
    /// Collections to back up; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collections: Vec<String>,
    /// Retain (default) keeps the objects when the resource is deleted;
    /// Delete removes them first.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Days after which the backup expires: resource and objects both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub retention_days: Option<u32>,
    /// Upper bound on the whole backup's duration, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    #[serde(default)]
    pub mode: BackupMode,
    /// After the manifest is written, one agent reads every object back
    /// from the store and checks its size and sha256 (and that every
    /// collection holds all its shards) before the backup is Completed; a
    /// backup that does not check out is Failed and deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QdrantBackupStatus {
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
    /// `s3://bucket/prefix/namespace/cluster/backup` once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_path: Option<String>,
    /// Where the backup is written, fixed when it starts: deleting the
    /// backup and restoring it by backupRef act here, whatever the spec
    /// says later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<BackupLocation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdrant_version: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collections: Vec<CollectionResult>,
    /// The agents' tasks, one per pod and attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<AgentTask>,
    /// Why the backup failed, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The read-back check of `spec.verify`: who ran it, when, and how it went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

/// Where a backup's objects are: `s3://<bucket>/<prefix>/<backup name>/`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupLocation {
    pub bucket: String,
    /// Key prefix of the cluster's backups: `<storage prefix>/<namespace>/<cluster>`.
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl QdrantBackup {
    /// The location this backup writes to when it starts, from its spec.
    pub fn location_from_spec(&self) -> BackupLocation {
        let s3 = &self.spec.storage.s3;
        BackupLocation {
            bucket: s3.bucket.clone(),
            prefix: qdrant_agent_proto::layout::cluster_prefix(
                s3.prefix.as_deref(),
                &self.namespace().unwrap_or_default(),
                &self.spec.cluster_ref.name,
            ),
            endpoint: s3.endpoint.clone(),
        }
    }

    /// Where this backup's objects are: the location pinned in status when
    /// it started, else (not started yet) the spec's.
    pub fn location(&self) -> BackupLocation {
        self.status
            .as_ref()
            .and_then(|s| s.location.clone())
            .unwrap_or_else(|| self.location_from_spec())
    }

    /// The storage to reach this backup's objects: the spec's credentials,
    /// region and encryption at the pinned bucket and endpoint, and the
    /// key prefix of its cluster.
    pub fn storage_at_location(&self) -> (S3Storage, String) {
        let at = self.location();
        let s3 = S3Storage {
            bucket: at.bucket,
            endpoint: at.endpoint,
            ..self.spec.storage.s3.clone()
        };
        (s3, at.prefix)
    }

    /// `s3://bucket/<prefix>/<backup>`: where its objects live.
    pub fn s3_path(&self) -> String {
        let at = self.location();
        format!("s3://{}/{}/{}", at.bucket, at.prefix, self.name_any())
    }
}

/// A read-back check of a backup by one agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// The check as an agent task (pod, task id, instance, attempt, state).
    pub task: AgentTask,
    /// Set when it ended: when it passed, or when it found a problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// How many objects and bytes were read back and matched.
    #[serde(default)]
    pub objects: u32,
    #[serde(default)]
    pub bytes: u64,
}
