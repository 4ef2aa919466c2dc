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
        r.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
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
