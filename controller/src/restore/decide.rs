//! Pure: what a QdrantRestore does next, where its backup is, what of the
//! backup it restores, and the agent requests of each stage.

use crate::crd::{
    AgentTask, OperationPhase, QdrantBackup, QdrantRestore, QdrantRestoreStatus, RestoreStage,
    S3Storage,
};
use crate::operation::{Step, cluster_gate};
use crate::runtime::Halt;
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
            reason: "WaitingForRestore",
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
        let none: &[QdrantRestore] = &[];
        let step = |c: Option<&Target>, r: &QdrantRestore| match next_step(r, c, none) {
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
    fn one_restore_runs_per_cluster_and_the_oldest_waiting_goes_first() {
        let running_cluster = cluster(Some(ClusterPhase::Running), true);
        let at = |name: &str, secs: i64, stage: Option<RestoreStage>, phase| {
            let mut r = restore("  backupRef: {name: nightly}\n");
            r.metadata.name = Some(name.into());
            r.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap(),
                ));
            r.status = Some(crate::crd::QdrantRestoreStatus {
                phase,
                stage,
                ..Default::default()
            });
            r
        };
        let reason = |r: &QdrantRestore, others: &[QdrantRestore]| match next_step(
            r,
            Some(&running_cluster),
            others,
        ) {
            Step::Wait { reason, message } => format!("wait {reason}: {message}"),
            other => format!("{other:?}"),
        };
        let first = at(
            "first",
            0,
            Some(RestoreStage::Verify),
            Some(OperationPhase::InProgress),
        );
        let second = at("second", 10, None, Some(OperationPhase::Pending));
        let third = at("third", 20, None, None);
        let all = [first.clone(), second.clone(), third.clone()];
        // A newer restore waits for the running one, even though it is older.
        let younger_first = at(
            "first",
            30,
            Some(RestoreStage::Upload),
            Some(OperationPhase::InProgress),
        );
        assert_eq!(
            reason(&second, &[younger_first, third.clone()]),
            "wait WaitingForRestore: restore first into QdrantCluster vectors runs first (one restore per cluster at a time)"
        );
        assert_eq!(reason(&first, &all), "Run", "a started restore goes on");
        assert!(reason(&third, &all).contains("restore first"));
        // Once the first ended, the oldest waiting one goes first.
        let done = at(
            "first",
            0,
            Some(RestoreStage::Done),
            Some(OperationPhase::Completed),
        );
        let later = [done.clone(), second.clone(), third.clone()];
        assert_eq!(reason(&second, &later), "Run");
        assert!(reason(&third, &later).contains("restore second"));
        // Another cluster's restore does not hold this one.
        let mut elsewhere = first.clone();
        elsewhere.spec.target_cluster_ref.name = "other".into();
        assert_eq!(reason(&second, &[elsewhere]), "Run");
    }

    #[test]
    fn a_restore_by_backup_ref_reads_where_the_backup_was_written() {
        let r = restore("  backupRef: {name: nightly}\n");
        let mut b = backup(Some(OperationPhase::Completed));
        b.status.as_mut().unwrap().location = Some(b.location_from_spec());
        // The spec edited after it completed (before immutability, or by a
        // status-less copy): the pinned location still wins.
        b.spec.storage.s3.prefix = Some("elsewhere".into());
        b.spec.storage.s3.bucket = "other-bucket".into();
        let src = source(&r, Some(&b)).unwrap();
        assert_eq!(src.s3_path(), "s3://bkt/team/search/vectors/nightly");
    }

    #[test]
    fn a_rollback_looks_only_at_what_the_restore_was_creating_and_needs_no_backup() {
        let r = restore("  collectionMapping: {docs: docs-copy}\n");
        let task = whole_collections_task(
            &r,
            RestoreStage::Verify,
            "vectors-0",
            "i".into(),
            &["docs".into()],
        );
        let status = crate::crd::QdrantRestoreStatus {
            s3_path: Some("s3://bkt/team/search/vectors/nightly".into()),
            stage: Some(RestoreStage::Verify),
            tasks: vec![task],
            // What the agent reported it created.
            created_collections: vec!["docs-copy".into()],
            ..Default::default()
        };
        let req = rollback_request(&r, &status, "t-1");
        assert_eq!(req.stage(), pb::RestoreStage::Rollback);
        assert_eq!(req.backup_name, "nightly");
        // The agent deletes only collections carrying this owner's marker.
        assert_eq!(req.owner, "r-1");
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
        // Nothing started: nothing to look at.
        let fresh = crate::crd::QdrantRestoreStatus::default();
        assert!(rollback_targets(&r, &fresh).is_empty());
    }
}
