//! Pure: what a QdrantRestore does next, where its backup is, what of the
//! backup it restores, and the agent requests of each stage.

use crate::crd::{
    AgentTask, OperationPhase, QdrantBackup, QdrantRestore, QdrantRestoreStatus, RestoreStage,
    S3Storage,
};
use crate::operation::{Step, cluster_gate};
use crate::runtime::Halt;
use crate::runtime::Wait;
use crate::target::Target;
use crate::tasks;
use kube::ResourceExt;
use qdrant_agent_proto::v1::{self as pb, CollectionSelection, StartRestoreRequest, StorageTarget};

fn phase(r: &QdrantRestore) -> Option<OperationPhase> {
    r.status.as_ref().and_then(|s| s.phase)
}

fn ended(r: &QdrantRestore) -> bool {
    matches!(
        phase(r),
        Some(OperationPhase::Completed | OperationPhase::Failed)
    ) || r.status.as_ref().and_then(|s| s.stage) == Some(RestoreStage::Done)
}

/// The restore's next step from its status, its target cluster and the
/// other restores of its namespace: one restore runs per cluster at a time,
/// the oldest waiting first, so two never create, fill or roll back the same
/// collection at once.
pub fn next_step<O: std::borrow::Borrow<QdrantRestore>>(
    r: &QdrantRestore,
    cluster: Option<&Target>,
    others: &[O],
) -> Step {
    if ended(r) {
        return Step::Done;
    }
    let status = r.status.clone().unwrap_or_default();
    let ns = r.namespace().unwrap_or_default();
    let target = &r.spec.target_cluster_ref;
    let started = status.stage.is_some();
    if let Some(step) = cluster_gate("restore", target, &ns, cluster, started) {
        return step;
    }
    if started {
        return Step::Run;
    }
    let key = |x: &QdrantRestore| {
        (
            x.metadata.creation_timestamp.clone().map(|t| t.0),
            x.name_any(),
        )
    };
    let running = |x: &QdrantRestore| x.status.as_ref().is_some_and(|s| s.stage.is_some());
    let blocker = others
        .iter()
        .map(std::borrow::Borrow::borrow)
        .filter(|o| {
            o.name_any() != r.name_any() && &o.spec.target_cluster_ref == target && !ended(o)
        })
        .filter(|o| running(o) || key(o) < key(r))
        .min_by_key(|o| (!running(o), key(o)));
    match blocker {
        Some(o) => Step::Wait {
            reason: Wait::WaitingForRestore,
            message: format!(
                "restore {} into {} runs first (one restore per cluster at a time)",
                o.name_any(),
                target.describe()
            ),
        },
        None => Step::Run,
    }
}

/// Where the backup is: its storage settings, the key prefix above it and
/// its name (the directory holding `manifest.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub storage: S3Storage,
    pub prefix: String,
    pub name: String,
}

impl Source {
    pub fn s3_path(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}/{}", self.storage.bucket, self.name)
        } else {
            format!("s3://{}/{}/{}", self.storage.bucket, self.prefix, self.name)
        }
    }
}

/// Splits a backup's key (`source.s3.path`) into its prefix and name,
/// refusing what could escape the bucket layout.
pub fn split_path(path: &str) -> Result<(String, String), String> {
    let p = path.trim_matches('/');
    let segments: Vec<&str> = p.split('/').collect();
    if p.is_empty()
        || segments
            .iter()
            .any(|s| s.is_empty() || *s == "." || *s == ".." || s.chars().any(char::is_control))
    {
        return Err(format!(
            "source.s3.path {path:?} is not a key like prefix/namespace/cluster/backup"
        ));
    }
    let (name, prefix) = segments.split_last().expect("not empty");
    Ok((prefix.join("/"), name.to_string()))
}

/// The source of a restore: a raw S3 path, or the QdrantBackup it names
/// (`backup`, as read from the API server) once that is Completed.
pub fn source(r: &QdrantRestore, backup: Option<&QdrantBackup>) -> Result<Source, Halt> {
    let ns = r.namespace().unwrap_or_default();
    if let Some(s) = &r.spec.source {
        let (prefix, name) = split_path(&s.s3.path).map_err(|m| Halt::fail("InvalidSpec", m))?;
        return Ok(Source {
            storage: s.s3.storage.clone(),
            prefix,
            name,
        });
    }
    let Some(b) = &r.spec.backup_ref else {
        return Err(Halt::fail(
            "InvalidSpec",
            "give spec.backupRef or spec.source",
        ));
    };
    let Some(backup) = backup else {
        return Err(Halt::fail(
            "BackupNotFound",
            format!("QdrantBackup {ns}/{} not found", b.name),
        ));
    };
    match backup.status.as_ref().and_then(|s| s.phase) {
        Some(OperationPhase::Completed) => {
            // Where it was written (pinned when it started), whatever its
            // spec says now.
            let (storage, prefix) = backup.storage_at_location();
            Ok(Source {
                prefix,
                name: backup.name_any(),
                storage,
            })
        }
        Some(OperationPhase::Failed) => Err(Halt::fail(
            "BackupFailed",
            format!("QdrantBackup {} failed; it cannot be restored", b.name),
        )),
        _ => Err(Halt::wait(
            Wait::BackupNotComplete,
            format!("QdrantBackup {} is not Completed yet", b.name),
        )),
    }
}

/// The collections of a backup's manifest, as far as planning needs them.
#[derive(Debug, serde::Deserialize)]
pub struct ManifestView {
    pub collections: Vec<CollectionView>,
}

#[derive(Debug, serde::Deserialize)]
pub struct CollectionView {
    pub name: String,
    #[serde(default)]
    pub config: serde_json::Value,
}

/// The collections to restore (the spec's list, or all in the manifest),
/// checked against the manifest and the target's pod count before anything
/// in Qdrant is touched.
pub fn selection(
    r: &QdrantRestore,
    manifest: &ManifestView,
    pods: usize,
    src: &Source,
) -> Result<Vec<String>, Halt> {
    let wanted: Vec<String> = if r.spec.collections.is_empty() {
        manifest
            .collections
            .iter()
            .map(|c| c.name.clone())
            .collect()
    } else {
        r.spec.collections.clone()
    };
    for c in &wanted {
        let Some(entry) = manifest.collections.iter().find(|e| &e.name == c) else {
            return Err(Halt::fail(
                "CollectionNotInBackup",
                format!("collection {c:?} is not in backup {}", src.s3_path()),
            ));
        };
        let custom = entry
            .config
            .pointer("/params/sharding_method")
            .and_then(|v| v.as_str())
            == Some("custom");
        if custom && pods > 1 {
            return Err(Halt::fail(
                "Unsupported",
                format!(
                    "collection {c:?} uses custom sharding, which restores into a single-node cluster only (or with the agent CLI)"
                ),
            ));
        }
    }
    if let Some(k) = r
        .spec
        .collection_mapping
        .keys()
        .find(|k| !wanted.contains(k))
    {
        return Err(Halt::fail(
            "InvalidSpec",
            format!("spec.collectionMapping names {k:?}, which is not being restored"),
        ));
    }
    Ok(wanted)
}

/// The collections a rollback of this restore looks at, by their names in
/// the target: those its agents reported created, and every one its tasks
/// were restoring (a task lost before it reported). The agent deletes only
/// those that carry this restore's marker, so one that existed before, or
/// that another party created meanwhile, is never touched.
pub fn rollback_targets(r: &QdrantRestore, status: &QdrantRestoreStatus) -> Vec<String> {
    let mut v: Vec<String> = status.created_collections.clone();
    if status.stage.is_some() {
        v.extend(
            sources(&status.tasks)
                .iter()
                .map(|c| target_name(r, c).to_string()),
        );
    }
    v.sort();
    v.dedup();
    v
}

/// The Rollback task: deletes, of `rollback_targets`, those this restore
/// created (they carry its UID as marker). It reads nothing from the
/// store, so the storage named is only the backup's location (as in
/// status), without credentials.
pub fn rollback_request(
    r: &QdrantRestore,
    status: &QdrantRestoreStatus,
    task_id: &str,
) -> StartRestoreRequest {
    let (url, name) = status
        .s3_path
        .as_deref()
        .and_then(|p| p.rsplit_once('/'))
        .map(|(u, n)| (u.to_string(), n.to_string()))
        .unwrap_or_default();
    StartRestoreRequest {
        task_id: task_id.to_string(),
        storage: Some(StorageTarget {
            url,
            ..Default::default()
        }),
        backup_name: name,
        collections: rollback_targets(r, status)
            .into_iter()
            .map(|collection| CollectionSelection {
                collection,
                shard_ids: vec![],
            })
            .collect(),
        stage: pb::RestoreStage::Rollback as i32,
        owner: r.uid().unwrap_or_default(),
        ..Default::default()
    }
}

/// A single node takes the whole restore in one task; several verify and
/// create first, then upload shard by shard, then finish.
pub fn first_stage(pods: usize) -> RestoreStage {
    if pods == 1 {
        RestoreStage::All
    } else {
        RestoreStage::Verify
    }
}

/// The collection `c` of the backup is restored as.
pub fn target_name<'a>(r: &'a QdrantRestore, c: &'a str) -> &'a str {
    r.spec
        .collection_mapping
        .get(c)
        .map(String::as_str)
        .unwrap_or(c)
}

/// `restore-<uid>-<stage>-<pod>`: one task per stage and pod.
pub fn task_id(r: &QdrantRestore, stage: impl std::fmt::Debug, pod: &str) -> String {
    format!(
        "restore-{}-{}-{pod}",
        r.uid().unwrap_or_default(),
        format!("{stage:?}").to_lowercase()
    )
}

/// One task on `pod` covering whole collections (shard 0 stands for "all
/// shards" in a stage that does not upload).
pub fn whole_collections_task(
    r: &QdrantRestore,
    stage: impl std::fmt::Debug,
    pod: &str,
    instance_id: String,
    collections: &[String],
) -> AgentTask {
    tasks::task(
        pod.to_string(),
        task_id(r, stage, pod),
        instance_id,
        1,
        collections.iter().map(|c| (c.clone(), 0)),
    )
}

/// The backup's names of the collections the tasks restore.
pub fn sources(tasks: &[AgentTask]) -> Vec<String> {
    let mut v: Vec<String> = tasks
        .iter()
        .flat_map(|t| t.shards.iter().map(|s| s.collection.clone()))
        .collect();
    v.sort();
    v.dedup();
    v
}

pub fn proto_stage(stage: RestoreStage) -> pb::RestoreStage {
    match stage {
        RestoreStage::All => pb::RestoreStage::Unspecified,
        RestoreStage::Verify => pb::RestoreStage::Create,
        RestoreStage::Upload => pb::RestoreStage::Upload,
        RestoreStage::Finish | RestoreStage::Done => pb::RestoreStage::Finish,
        RestoreStage::RollingBack => pb::RestoreStage::Rollback,
    }
}

/// The agent request of task `t` in `stage`.
pub fn request(
    r: &QdrantRestore,
    storage: &StorageTarget,
    src: &Source,
    t: &AgentTask,
    stage: pb::RestoreStage,
) -> StartRestoreRequest {
    let upload = stage == pb::RestoreStage::Upload;
    let by_collection = tasks::by_collection(&t.shards);
    let names: Vec<&str> = by_collection.keys().copied().collect();
    StartRestoreRequest {
        task_id: t.task_id.clone(),
        storage: Some(storage.clone()),
        backup_name: src.name.clone(),
        collections: by_collection
            .into_iter()
            .map(|(c, shard_ids)| CollectionSelection {
                collection: c.to_string(),
                shard_ids: if upload { shard_ids } else { vec![] },
            })
            .collect(),
        rename: r
            .spec
            .collection_mapping
            .iter()
            .filter(|(k, _)| names.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        // Read in full only when asked, and then once, before any upload:
        // Qdrant checks each upload's sha256 in any case.
        skip_verify: !r.spec.verify_first || upload || stage == pb::RestoreStage::Finish,
        stage: stage as i32,
        owner: r.uid().unwrap_or_default(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
