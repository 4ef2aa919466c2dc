//! Pure: what a QdrantRestore does next, where its backup is, what of the
//! backup it restores, and the agent requests of each stage.

use crate::backup::decide::cluster_prefix;
use crate::crd::{AgentTask, OperationPhase, QdrantBackup, QdrantRestore, RestoreStage, S3Storage};
use crate::operation::{Step, cluster_gate};
use crate::runtime::Halt;
use crate::target::Target;
use crate::tasks;
use kube::ResourceExt;
use qdrant_agent_proto::v1::{self as pb, CollectionSelection, StartRestoreRequest, StorageTarget};

/// The restore's next step from its status and its target cluster.
pub fn next_step(r: &QdrantRestore, cluster: Option<&Target>) -> Step {
    let status = r.status.clone().unwrap_or_default();
    if matches!(
        status.phase,
        Some(OperationPhase::Completed | OperationPhase::Failed)
    ) || status.stage == Some(RestoreStage::Done)
    {
        return Step::Done;
    }
    let ns = r.namespace().unwrap_or_default();
    let target = &r.spec.target_cluster_ref;
    cluster_gate("restore", target, &ns, cluster, status.stage.is_some()).unwrap_or(Step::Run)
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
        Some(OperationPhase::Completed) => Ok(Source {
            prefix: cluster_prefix(
                backup.spec.storage.s3.prefix.as_deref(),
                &ns,
                &backup.spec.cluster_ref.name,
            ),
            name: backup.name_any(),
            storage: backup.spec.storage.s3.clone(),
        }),
        Some(OperationPhase::Failed) => Err(Halt::fail(
            "BackupFailed",
            format!("QdrantBackup {} failed; it cannot be restored", b.name),
        )),
        _ => Err(Halt::wait(
            "BackupNotComplete",
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

/// The target names of `wanted` that do not exist in the target yet (as
/// `placement` of all its collections shows): what this restore creates,
/// and what a rollback may delete. An existing one is refused by the agent
/// and never deleted.
pub fn to_create(
    r: &QdrantRestore,
    wanted: &[String],
    placement: &pb::GetPlacementResponse,
) -> Vec<String> {
    wanted
        .iter()
        .map(|c| target_name(r, c).to_string())
        .filter(|t| !placement.collections.iter().any(|p| &p.name == t))
        .collect()
}

/// The Rollback task: deletes `created_collections` by their names in
/// Qdrant. It reads nothing from the store, so the storage named is only
/// the backup's location (as in status), without credentials.
pub fn rollback_request(
    status: &crate::crd::QdrantRestoreStatus,
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
        collections: status
            .created_collections
            .iter()
            .map(|c| CollectionSelection {
                collection: c.clone(),
                shard_ids: vec![],
            })
            .collect(),
        stage: pb::RestoreStage::Rollback as i32,
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
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ClusterPhase, QdrantClusterStatus};

    fn restore(spec: &str) -> QdrantRestore {
        serde_yaml::from_str(&format!(
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantRestore\n\
             metadata: {{name: back, namespace: search, uid: r-1}}\n\
             spec:\n  targetClusterRef: {{name: vectors}}\n{spec}"
        ))
        .unwrap()
    }

    fn cluster(phase: Option<ClusterPhase>, agent: bool) -> Target {
        let mut c: crate::crd::QdrantCluster = serde_yaml::from_str(&format!(
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {{name: vectors, namespace: search}}\n\
             spec: {{version: v1.18.3, agent: {{enabled: {agent}}}}}\n"
        ))
        .unwrap();
        c.status = Some(QdrantClusterStatus {
            phase,
            ..Default::default()
        });
        Target::of_cluster(&c)
    }

    fn backup(phase: Option<OperationPhase>) -> QdrantBackup {
        let mut b: QdrantBackup = serde_yaml::from_str(
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {name: nightly, namespace: search}\n\
             spec: {clusterRef: {name: vectors}, storage: {s3: {bucket: bkt, prefix: team}}}\n",
        )
        .unwrap();
        b.status = Some(crate::crd::QdrantBackupStatus {
            phase,
            ..Default::default()
        });
        b
    }

    fn manifest(collections: &[(&str, &str)]) -> ManifestView {
        serde_json::from_value(serde_json::json!({"collections": collections.iter().map(|(n, sharding)|
            serde_json::json!({"name": n, "config": {"params": {"sharding_method": sharding}}})).collect::<Vec<_>>()}))
        .unwrap()
    }

    fn reason(h: Halt) -> String {
        match h {
            Halt::Wait { reason, .. } => format!("wait {reason}"),
            Halt::Fail { reason, .. } => format!("fail {reason}"),
            Halt::Kube(e) => format!("kube {e}"),
        }
    }

    #[test]
    fn a_restore_waits_for_its_cluster_and_fails_when_it_goes_away_mid_way() {
        let r = restore("  backupRef: {name: nightly}\n");
        let step = |c: Option<&Target>, r: &QdrantRestore| match next_step(r, c) {
            Step::Wait { reason, .. } => format!("wait {reason}"),
            Step::Fail { reason, .. } => format!("fail {reason}"),
            other => format!("{other:?}"),
        };
        assert_eq!(step(None, &r), "wait ClusterNotFound");
        let starting = cluster(Some(ClusterPhase::Pending), true);
        assert_eq!(step(Some(&starting), &r), "wait ClusterNotReady");
        let no_agent = cluster(Some(ClusterPhase::Running), false);
        assert_eq!(step(Some(&no_agent), &r), "fail AgentDisabled");
        let running = cluster(Some(ClusterPhase::Running), true);
        assert_eq!(step(Some(&running), &r), "Run");
        let mut started = r.clone();
        started.status = Some(crate::crd::QdrantRestoreStatus {
            phase: Some(OperationPhase::InProgress),
            stage: Some(RestoreStage::Upload),
            ..Default::default()
        });
        assert_eq!(step(None, &started), "fail ClusterNotFound");
        // Once started, a cluster that is rolling is followed, not waited for.
        assert_eq!(step(Some(&starting), &started), "Run");
        started.status.as_mut().unwrap().stage = Some(RestoreStage::Done);
        assert_eq!(step(Some(&running), &started), "Done");
    }

    #[test]
    fn the_source_is_a_completed_backup_or_a_safe_s3_path() {
        let r = restore("  backupRef: {name: nightly}\n");
        let done = backup(Some(OperationPhase::Completed));
        let src = source(&r, Some(&done)).unwrap();
        assert_eq!(src.s3_path(), "s3://bkt/team/search/vectors/nightly");
        assert_eq!(reason(source(&r, None).unwrap_err()), "fail BackupNotFound");
        let running = backup(Some(OperationPhase::InProgress));
        assert_eq!(
            reason(source(&r, Some(&running)).unwrap_err()),
            "wait BackupNotComplete"
        );
        let failed = backup(Some(OperationPhase::Failed));
        assert_eq!(
            reason(source(&r, Some(&failed)).unwrap_err()),
            "fail BackupFailed"
        );
        let raw = restore("  source: {s3: {bucket: b, path: /x/y/z/}}\n");
        assert_eq!(source(&raw, None).unwrap().s3_path(), "s3://b/x/y/z");
        let escape = restore("  source: {s3: {bucket: b, path: x/../z}}\n");
        assert_eq!(
            reason(source(&escape, None).unwrap_err()),
            "fail InvalidSpec"
        );
        let neither = restore("");
        assert_eq!(
            reason(source(&neither, None).unwrap_err()),
            "fail InvalidSpec"
        );
    }

    #[test]
    fn only_what_the_backup_holds_and_the_target_can_take_is_restored() {
        let src = source(&restore("  source: {s3: {bucket: b, path: p/n}}\n"), None).unwrap();
        let m = manifest(&[("docs", "auto"), ("tenants", "custom")]);
        let all = restore("");
        assert_eq!(selection(&all, &m, 1, &src).unwrap(), ["docs", "tenants"]);
        // Custom sharding restores into one node only.
        assert_eq!(
            reason(selection(&all, &m, 3, &src).unwrap_err()),
            "fail Unsupported"
        );
        let docs = restore("  collections: [docs]\n  collectionMapping: {docs: docs-copy}\n");
        assert_eq!(selection(&docs, &m, 3, &src).unwrap(), ["docs"]);
        assert_eq!(target_name(&docs, "docs"), "docs-copy");
        let missing = restore("  collections: [nope]\n");
        assert_eq!(
            reason(selection(&missing, &m, 1, &src).unwrap_err()),
            "fail CollectionNotInBackup"
        );
        let stray = restore("  collections: [docs]\n  collectionMapping: {tenants: t2}\n");
        assert_eq!(
            reason(selection(&stray, &m, 1, &src).unwrap_err()),
            "fail InvalidSpec"
        );
    }

    #[test]
    fn stages_verify_once_when_asked_and_name_shards_only_when_uploading() {
        let r = restore("  collectionMapping: {docs: docs-copy}\n  verifyFirst: true\n");
        assert_eq!(first_stage(1), RestoreStage::All);
        assert_eq!(first_stage(3), RestoreStage::Verify);
        let src = source(&restore("  source: {s3: {bucket: b, path: p/n}}\n"), None).unwrap();
        let storage = StorageTarget::default();
        let mut t = whole_collections_task(
            &r,
            RestoreStage::Verify,
            "vectors-0",
            "i".into(),
            &["docs".into(), "other".into()],
        );
        assert_eq!(t.task_id, "restore-r-1-verify-vectors-0");
        let verify = request(&r, &storage, &src, &t, proto_stage(RestoreStage::Verify));
        assert!(!verify.skip_verify);
        assert!(verify.collections.iter().all(|c| c.shard_ids.is_empty()));
        assert_eq!(
            verify.rename.get("docs").map(String::as_str),
            Some("docs-copy")
        );
        t.shards[0].shard_id = 2;
        let upload = request(&r, &storage, &src, &t, proto_stage(RestoreStage::Upload));
        assert!(upload.skip_verify);
        assert_eq!(upload.collections[0].shard_ids, [2]);
        assert_eq!(sources(&[t.clone(), t.clone()]), ["docs", "other"]);
        // By default one pass: Qdrant checks each upload's sha256.
        let one_pass = restore("  collectionMapping: {docs: docs-copy}\n");
        let create = request(
            &one_pass,
            &storage,
            &src,
            &t,
            proto_stage(RestoreStage::Verify),
        );
        assert!(create.skip_verify);
    }

    #[test]
    fn a_rollback_deletes_only_what_the_restore_created_and_needs_no_backup() {
        let r = restore("  collectionMapping: {docs: docs-copy}\n");
        let existing = pb::GetPlacementResponse {
            collections: vec![pb::CollectionPlacement {
                name: "other".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let wanted = ["docs".to_string(), "other".to_string()];
        // "other" exists already: the agent refuses it, a rollback never touches it.
        let created = to_create(&r, &wanted, &existing);
        assert_eq!(created, ["docs-copy"]);
        let status = crate::crd::QdrantRestoreStatus {
            s3_path: Some("s3://bkt/team/search/vectors/nightly".into()),
            created_collections: created,
            ..Default::default()
        };
        let req = rollback_request(&status, "t-1");
        assert_eq!(req.stage(), pb::RestoreStage::Rollback);
        assert_eq!(req.backup_name, "nightly");
        let storage = req.storage.unwrap();
        assert_eq!(storage.url, "s3://bkt/team/search/vectors");
        assert!(storage.credentials.is_none());
        let names: Vec<&str> = req
            .collections
            .iter()
            .map(|c| c.collection.as_str())
            .collect();
        assert_eq!(names, ["docs-copy"]);
        assert!(req.rename.is_empty());
    }
}
