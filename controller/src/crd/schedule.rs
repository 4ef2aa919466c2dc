//! `QdrantBackupSchedule`: backups on a cron schedule, with retention.

use super::{BackupMode, BackupStorage, ClusterReference, DeletionPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Backups of a QdrantCluster taken on a schedule and pruned by retention.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "qdrant.io",
    version = "v1alpha1",
    kind = "QdrantBackupSchedule",
    namespaced,
    status = "QdrantBackupScheduleStatus",
    shortname = "qbs",
    category = "qdrant",
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Suspend","type":"boolean","jsonPath":".spec.suspend"}"#,
    printcolumn = r#"{"name":"Last Backup","type":"string","jsonPath":".status.lastBackupName"}"#,
    printcolumn = r#"{"name":"Last Success","type":"date","jsonPath":".status.lastSuccessfulBackupTime"}"#,
    printcolumn = r#"{"name":"Next","type":"date","jsonPath":".status.nextBackupTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct QdrantBackupScheduleSpec {
    /// Five-field cron expression, or a macro such as `@daily`.
    #[schemars(
        length(min = 1),
        regex(
            pattern = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\S+\s+){4}\S+)$"
        )
    )]
    pub schedule: String,
    /// IANA time zone the schedule is read in (default UTC).
    #[serde(default = "utc")]
    pub time_zone: String,
    /// The QdrantCluster (or StatefulSet with the injected agent) to back
    /// up, in the same namespace.
    pub cluster_ref: ClusterReference,
    pub storage: BackupStorage,
    /// Collections to back up; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collections: Vec<String>,
    /// Skip fires while set.
    #[serde(default)]
    pub suspend: bool,
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// A fire missed by more than this many seconds is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_deadline_seconds: Option<i64>,
    /// A delay of up to this many seconds, drawn once per schedule (from its
    /// UID) and the same at every fire, so many clusters on one schedule do
    /// not start in the same second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub jitter_seconds: Option<u32>,
    #[serde(default)]
    pub backup_template: BackupTemplate,
    #[serde(default)]
    pub retention_policy: RetentionPolicy,
}

fn utc() -> String {
    "UTC".into()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Skip a fire while a backup of this schedule runs.
    #[default]
    Forbid,
    Allow,
    /// Cancel the running backup and start a new one.
    Replace,
}

/// Extras for the QdrantBackups a schedule creates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupTemplate {
    /// Delete (default for scheduled backups, so retention frees the bucket) or Retain.
    #[serde(default = "delete")]
    pub deletion_policy: DeletionPolicy,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub mode: BackupMode,
    /// Check every backup by reading it back (QdrantBackup `spec.verify`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify: bool,
}

fn delete() -> DeletionPolicy {
    DeletionPolicy::Delete
}

impl Default for BackupTemplate {
    fn default() -> Self {
        Self {
            deletion_policy: DeletionPolicy::Delete,
            labels: BTreeMap::new(),
            mode: BackupMode::Auto,
            verify: false,
        }
    }
}

/// Completed backups kept: the union of each rule's picks (the newest of
/// each hour, day, week and month, in the schedule's time zone). The newest
/// Completed backup is always kept.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_monthly: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SchedulePhase {
    Active,
    Suspended,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QdrantBackupScheduleStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SchedulePhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_backup_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept_backups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
