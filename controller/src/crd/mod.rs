//! The four custom resources, group `qdrant.io`, version `v1alpha1`.
//! CRD YAML under `manifests/crds/` is generated from these types by
//! `crdgen`; a test fails when the two drift apart.

mod backup;
mod cluster;
mod restore;
mod schedule;

pub use backup::*;
pub use cluster::*;
pub use restore::*;
pub use schedule::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "qdrant.io";

/// Every CRD of the operator, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut cluster = QdrantCluster::crd();
    // Pods carry `<name>-<revision hash>` and `<name>-<ordinal>` in labels
    // of at most 63 characters; the Service is `<name>-headless`.
    name_rule(
        &mut cluster,
        52,
        "a QdrantCluster name has at most 52 characters: its pods carry it in labels of at most 63",
    );
    let mut schedule = QdrantBackupSchedule::crd();
    // Its backups carry the name in the label qdrant.io/schedule.
    name_rule(
        &mut schedule,
        63,
        "a QdrantBackupSchedule name has at most 63 characters: its backups carry it in a label",
    );
    let mut crds = vec![cluster, QdrantBackup::crd(), schedule, QdrantRestore::crd()];
    for crd in &mut crds {
        for v in &mut crd.spec.versions {
            if let Some(s) = v
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                kubernetes_formats(s);
            }
        }
    }
    crds
}

/// Unsigned integers' `uint32`/`uint64` formats are not OpenAPI's: the API
/// server warns "unrecognized format" on every apply. They become a plain
/// integer with a minimum of 0.
fn kubernetes_formats(s: &mut JSONSchemaProps) {
    if matches!(
        s.format.as_deref(),
        Some("uint32" | "uint64" | "uint16" | "uint8" | "uint")
    ) {
        s.format = None;
        s.minimum = Some(s.minimum.unwrap_or(0.0).max(0.0));
    }
    let children = s
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(s.items.iter_mut().flat_map(|i| match i {
            JSONSchemaPropsOrArray::Schema(s) => vec![s.as_mut()],
            JSONSchemaPropsOrArray::Schemas(v) => v.iter_mut().collect(),
        }))
        .chain(s.additional_properties.iter_mut().filter_map(|a| match a {
            JSONSchemaPropsOrBool::Schema(s) => Some(s.as_mut()),
            JSONSchemaPropsOrBool::Bool(_) => None,
        }))
        .chain(
            [&mut s.all_of, &mut s.any_of, &mut s.one_of]
                .into_iter()
                .flatten()
                .flatten(),
        );
    for c in children {
        kubernetes_formats(c);
    }
}

/// A CEL rule on `metadata.name`, which the API server checks only for
/// being a DNS subdomain (253 characters).
fn name_rule(crd: &mut CustomResourceDefinition, max: usize, message: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;
    for v in &mut crd.spec.versions {
        if let Some(schema) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema
                .x_kubernetes_validations
                .get_or_insert_with(Vec::new)
                .push(ValidationRule {
                    rule: format!("size(self.metadata.name) <= {max}"),
                    message: Some(message.into()),
                    ..Default::default()
                });
        }
    }
}

/// A reference to an object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectReference {
    /// Name of the object, in the resource's own namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The Qdrant a backup or restore works on, in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReference {
    /// `QdrantCluster` (the default), or `StatefulSet` for a Qdrant this
    /// operator does not run (for example one installed by Qdrant's Helm
    /// chart) whose pods carry the injected agent.
    #[serde(default)]
    pub kind: ClusterKind,
    /// Name of the QdrantCluster or StatefulSet.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

impl ClusterReference {
    /// How messages name it: `QdrantCluster vectors`, `StatefulSet qdrant`.
    pub fn describe(&self) -> String {
        format!("{:?} {}", self.kind, self.name)
    }
}

/// What kind of object a [`ClusterReference`] names.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ClusterKind {
    #[default]
    QdrantCluster,
    StatefulSet,
}

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret, in the resource's own namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// Where backups live in S3 or an S3-compatible store.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    /// Bucket name.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Key prefix; backups go under `<prefix>/<namespace>/<cluster>/<backup>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[^/].*[^/]$|^[^/]$"))]
    pub prefix: Option<String>,
    /// Region, e.g. `eu-west-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint of an S3-compatible store (MinIO, Ceph, ...); path-style
    /// addressing is used with a custom endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    /// Secret in the same namespace with keys `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN`. Without it,
    /// the agents use their pods' identity (IRSA, instance profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalObjectReference>,
    /// Server-side encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<ServerSideEncryption>,
    /// KMS key id when `sse` is `aws:kms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse_kms_key_id: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ServerSideEncryption {
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    AwsKms,
}

/// Backup storage. S3 is the only kind for now.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct BackupStorage {
    pub s3: S3Storage,
}

/// What deleting a backup resource does to its objects in the bucket.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the objects: deleting the resource never destroys data.
    #[default]
    Retain,
    /// Delete the objects before the resource goes.
    Delete,
}

/// How the agents take each backup.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupMode {
    /// Live shard snapshots streamed to S3; needs no free disk.
    Stream,
    /// Shard snapshot files written by Qdrant, uploaded, deleted.
    #[serde(rename = "shard-file")]
    ShardFile,
    /// Collection snapshot files written by Qdrant, uploaded, deleted.
    File,
    /// `shard-file` when the snapshots volume has room, `stream` otherwise.
    #[default]
    Auto,
}

/// Phase of a backup or a restore. Completed and Failed are terminal.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OperationPhase {
    Pending,
    InProgress,
    Completed,
    Failed,
}

/// Progress of a backup or restore, as reported by the agents.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskProgress {
    pub bytes_done: u64,
    pub shards_done: u32,
    pub shards_total: u32,
}

/// One shard object of a backup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardObject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_id: Option<u32>,
    /// Object key relative to the backup's root.
    pub key: String,
    pub size: u64,
    pub sha256: String,
    /// Pod whose agent took it.
    pub pod: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<u64>,
}

/// One agent task of a backup or restore, as the controller follows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentTask {
    /// Pod whose agent runs the task.
    pub pod: String,
    /// The task's id on that agent, derived from the resource's UID, the
    /// pod and the attempt: a repeated start attaches instead of starting twice.
    pub task_id: String,
    /// The agent process the task was started on. Another id means the
    /// agent restarted and the task is gone.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance_id: String,
    /// 1 for the first try; a lost task's shards go to a new task with the
    /// next attempt.
    pub attempt: u32,
    /// The shards the task covers (for a restore: the backup's names),
    /// written as runs of one collection's shard ids: a task of thousands
    /// of shards stays a few bytes per shard in status.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "shard_runs")]
    #[schemars(with = "Vec<shard_runs::Run>")]
    pub shards: Vec<TaskShard>,
    pub state: AgentTaskState,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub shards_done: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskShard {
    pub collection: String,
    pub shard_id: u32,
}

/// `AgentTask.shards` in status: consecutive shards of one collection as one
/// run. Reads the one-object-per-shard form earlier versions wrote too.
mod shard_runs {
    use super::TaskShard;
    use schemars::JsonSchema;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Shards of one collection.
    #[derive(Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct Run {
        pub collection: String,
        pub shard_ids: Vec<u32>,
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Run(Run),
        Shard(TaskShard),
    }

    pub fn serialize<S: Serializer>(shards: &[TaskShard], s: S) -> Result<S::Ok, S::Error> {
        let mut runs: Vec<Run> = Vec::new();
        for t in shards {
            match runs.last_mut() {
                Some(r) if r.collection == t.collection => r.shard_ids.push(t.shard_id),
                _ => runs.push(Run {
                    collection: t.collection.clone(),
                    shard_ids: vec![t.shard_id],
                }),
            }
        }
        runs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TaskShard>, D::Error> {
        let written = Vec::<Written>::deserialize(d)?;
        Ok(written
            .into_iter()
            .flat_map(|w| match w {
                Written::Run(r) => r
                    .shard_ids
                    .into_iter()
                    .map(|shard_id| TaskShard {
                        collection: r.collection.clone(),
                        shard_id,
                    })
                    .collect(),
                Written::Shard(t) => vec![t],
            })
            .collect())
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AgentTaskState {
    Running,
    Succeeded,
    Failed,
    /// The agent restarted or its pod went away; the shards were handed on.
    Lost,
}

/// Per-collection result of a backup or restore.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectionResult {
    pub name: String,
    /// Every shard object. Left out when the whole backup has more than
    /// 1,000 (status must stay far below the API server's object size
    /// limit); the manifest always lists every one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardObject>,
    /// How many objects, and their bytes.
    #[serde(default)]
    pub objects: u32,
    #[serde(default)]
    pub size_bytes: u64,
}

/// Every CRD as `(file name, YAML)`, as checked in under `manifests/crds/`.
pub fn rendered() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    all()
        .into_iter()
        .map(|crd| {
            let file = format!("{}.yaml", crd.spec.names.plural);
            Ok((
                file,
                format!(
                    "# Generated by crdgen from the Rust types: do not edit.\n{}",
                    serde_yaml::to_string(&crd)?
                ),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(c: &str, id: u32) -> TaskShard {
        TaskShard {
            collection: c.into(),
            shard_id: id,
        }
    }

    fn task(shards: Vec<TaskShard>) -> AgentTask {
        AgentTask {
            pod: "p-0".into(),
            task_id: "t".into(),
            instance_id: String::new(),
            attempt: 1,
            shards,
            state: AgentTaskState::Running,
            bytes_done: 0,
            shards_done: 0,
        }
    }

    #[test]
    fn task_shards_are_written_as_runs_and_read_back_in_order() {
        let t = task(vec![
            shard("docs", 0),
            shard("docs", 3),
            shard("imgs", 1),
            shard("docs", 1),
        ]);
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(
            v["shards"],
            serde_json::json!([
                {"collection": "docs", "shardIds": [0, 3]},
                {"collection": "imgs", "shardIds": [1]},
                {"collection": "docs", "shardIds": [1]}
            ])
        );
        assert_eq!(serde_json::from_value::<AgentTask>(v).unwrap(), t);
    }

    #[test]
    fn task_shards_written_one_per_object_by_earlier_versions_still_read() {
        let v = serde_json::json!({"pod": "p-0", "taskId": "t", "attempt": 1, "state": "Running",
            "shards": [{"collection": "docs", "shardId": 2}, {"collection": "docs", "shardIds": [4, 5]}]});
        let t: AgentTask = serde_json::from_value(v).unwrap();
        assert_eq!(
            t.shards,
            [shard("docs", 2), shard("docs", 4), shard("docs", 5)]
        );
    }
}
