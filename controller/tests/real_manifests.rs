//! `manifests/` on a real API server: `kubectl apply -k manifests/` is
//! accepted, every example applies as it is, and the CRDs' schemas and CEL
//! rules refuse invalid resources with their messages.

use test_support::stack::{World, need, repo};

fn apply(w: &World, yaml: &str) -> Result<(), String> {
    let out = need(w.cp.kubectl_stdin(&["apply", "-f", "-"], Some(yaml)));
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_applies_and_invalid_resources_are_refused_with_their_reason() {
    // World::start applies manifests/ with kubectl -k and waits for the CRDs.
    let w = World::start().await;
    w.kubectl(&["create", "namespace", "search"]);
    let dir = repo().join("manifests/examples");
    let mut examples: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    examples.sort();
    assert!(examples.len() >= 4, "{examples:?}");
    for e in &examples {
        let yaml = std::fs::read_to_string(e).unwrap();
        if let Err(msg) = apply(&w, &yaml) {
            panic!("{} is refused: {msg}", e.display());
        }
    }
    let out = w.kubectl(&["-n", "search", "get", "qc,qb,qbs,qr", "-o", "name"]);
    assert_eq!(out.lines().count(), examples.len(), "{out}");

    let cases: [(&str, &str, &str); 14] = [
        (
            "replicas without distributed mode",
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {name: bad, namespace: search}\n\
             spec: {replicas: 3, version: v1.18.3}\n",
            "replicas > 1 needs cluster.enabled: true",
        ),
        (
            "a restore with both sources",
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantRestore\nmetadata: {name: bad, namespace: search}\n\
             spec:\n  backupRef: {name: before-migration}\n  targetClusterRef: {name: vectors}\n\
             \x20 source: {s3: {bucket: some-bucket, path: a/b}}\n",
            "give exactly one of backupRef or source",
        ),
        (
            "a restore changed after creation",
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantRestore\nmetadata: {name: restore-docs, namespace: search}\n\
             spec:\n  backupRef: {name: before-migration}\n  targetClusterRef: {name: vectors}\n",
            "a restore cannot be changed once created",
        ),
        (
            "an unknown deletion policy",
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {name: bad, namespace: search}\n\
             spec:\n  clusterRef: {name: vectors}\n  deletionPolicy: Sometimes\n  storage: {s3: {bucket: some-bucket}}\n",
            "Unsupported value: \"Sometimes\"",
        ),
        (
            "a cluster name its pods' labels cannot carry",
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {name: a-cluster-name-that-is-long-enough-to-break-pod-labels, namespace: search}\n\
             spec: {replicas: 1, version: v1.18.3}\n",
            "at most 52 characters",
        ),
        (
            "a schedule name its backups' label cannot carry",
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackupSchedule\nmetadata: {name: a-schedule-name-that-is-far-too-long-for-the-label-its-backups-carry, namespace: search}\n\
             spec: {schedule: '@daily', clusterRef: {name: vectors}, storage: {s3: {bucket: some-bucket}}}\n",
            "at most 63 characters",
        ),
        (
            "an endpoint without a scheme",
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {name: bad, namespace: search}\n\
             spec:\n  clusterRef: {name: vectors}\n  storage: {s3: {bucket: some-bucket, endpoint: minio:9000}}\n",
            "spec.storage.s3.endpoint",
        ),
        (
            "a volume size shrunk on an existing cluster",
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {name: vectors, namespace: search}\n\
             spec: {replicas: 3, version: v1.18.3, cluster: {enabled: true}, persistence: {size: 9.5Gi}}\n",
            "persistence.size cannot shrink",
        ),
        (
            "a storage class set on an existing cluster",
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\nmetadata: {name: vectors, namespace: search}\n\
             spec: {replicas: 3, version: v1.18.3, cluster: {enabled: true}, persistence: {size: 10Gi, storageClassName: fast}}\n",
            "persistence.storageClassName cannot change",
        ),
        // What a backup holds and where it lives cannot change once it is
        // made: deleting it, or restoring it by backupRef, would act on
        // another backup.
        (
            "a backup's prefix edited after creation",
            &backup_edit(
                "bucket: my-qdrant-backups, prefix: elsewhere",
                "vectors",
                "[docs, images]",
                "Retain",
            ),
            "spec.storage.s3 bucket, prefix and endpoint cannot change",
        ),
        (
            "a backup's bucket edited after creation",
            &backup_edit(
                "bucket: other-bucket, prefix: prod",
                "vectors",
                "[docs, images]",
                "Retain",
            ),
            "spec.storage.s3 bucket, prefix and endpoint cannot change",
        ),
        (
            "a backup's endpoint set after creation",
            &backup_edit(
                "bucket: my-qdrant-backups, prefix: prod, endpoint: 'http://minio:9000'",
                "vectors",
                "[docs, images]",
                "Retain",
            ),
            "spec.storage.s3 bucket, prefix and endpoint cannot change",
        ),
        (
            "a backup's cluster edited after creation",
            &backup_edit(
                "bucket: my-qdrant-backups, prefix: prod",
                "other",
                "[docs, images]",
                "Retain",
            ),
            "spec.clusterRef cannot change",
        ),
        (
            "a backup's collections edited after creation",
            &backup_edit(
                "bucket: my-qdrant-backups, prefix: prod",
                "vectors",
                "[docs]",
                "Retain",
            ),
            "spec.collections cannot change",
        ),
    ];
    for (what, yaml, want) in cases {
        match apply(&w, yaml) {
            Ok(()) => panic!("{what} was accepted"),
            Err(msg) => assert!(msg.contains(want), "{what}: want {want:?} in {msg}"),
        }
    }
    // What is safe to change on a backup still is: its deletion policy,
    // retention, credentials and region.
    let safe = backup_edit(
        "bucket: my-qdrant-backups, prefix: prod",
        "vectors",
        "[docs, images]",
        "Delete",
    )
    .replace("region: eu-west-1", "region: eu-central-1")
    .replace("backup-s3-credentials", "rotated-s3-credentials")
        + "  retentionDays: 30\n";
    if let Err(msg) = apply(&w, &safe) {
        panic!("a safe change to a backup is refused: {msg}");
    }
}

/// The example backup `before-migration` with its spec edited.
fn backup_edit(s3: &str, cluster: &str, collections: &str, policy: &str) -> String {
    format!(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {{name: before-migration, namespace: search}}\n\
         spec:\n  clusterRef: {{name: {cluster}}}\n  storage: {{s3: {{{s3}, region: eu-west-1, credentialsSecretRef: {{name: backup-s3-credentials}}}}}}\n\
         \x20 collections: {collections}\n  deletionPolicy: {policy}\n  activeDeadlineSeconds: 7200\n"
    )
}

/// The API server refuses an Event whose note is over 1 KiB; the operator's
/// long messages (a Qdrant error can be) are cut so the Event is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_event_note_is_recorded_cut_to_what_the_api_server_takes() {
    use kube::runtime::events::{EventType, Recorder, Reporter};
    let w = World::start().await;
    w.kubectl(&["create", "namespace", "search"]);
    let cm = w.kubectl(&[
        "-n",
        "search",
        "create",
        "configmap",
        "anchor",
        "-o",
        "json",
    ]);
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_str(&cm).unwrap();
    let recorder = Recorder::new(
        w.admin.clone(),
        Reporter {
            controller: "qdrant-operator".into(),
            instance: None,
        },
    );
    let long = format!("QdrantError: {}", "x".repeat(3000));
    // Unchanged, the API server refuses it.
    let raw = kube::runtime::events::Event {
        type_: EventType::Warning,
        reason: "Failed".into(),
        note: Some(long.clone()),
        action: "Backup".into(),
        secondary: None,
    };
    let refs = kube::Resource::object_ref(&cm, &());
    assert!(recorder.publish(&raw, &refs).await.is_err());
    qdrant_operator::runtime::report::event(
        &recorder,
        &refs,
        EventType::Warning,
        "Failed",
        "Backup",
        long,
    )
    .await;
    let notes = w.kubectl(&[
        "-n",
        "search",
        "get",
        "events.events.k8s.io",
        "-o",
        "jsonpath={.items[*].note}",
    ]);
    assert!(
        notes.starts_with("QdrantError: xxx") && notes.ends_with('…'),
        "{notes}"
    );
    assert!(notes.len() <= 1024, "{}", notes.len());
}

/// A backup of a cluster with tens of thousands of shards keeps its status
/// under etcd's default request limit (1.5 MiB), and the status reads
/// back as written (the CRD's schema keeps every field). One object per
/// shard, as earlier versions wrote, took 2.1 MB here: over etcd's default
/// request limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_forty_thousand_shards_fits_its_status() {
    use kube::api::{Api, Patch, PatchParams};
    use qdrant_operator::crd::{
        AgentTask, AgentTaskState, OperationPhase, QdrantBackup, QdrantBackupStatus, TaskShard,
    };
    let w = World::start().await;
    w.kubectl(&["create", "namespace", "search"]);
    w.apply(
        "apiVersion: qdrant.io/v1alpha1\nkind: QdrantBackup\nmetadata: {name: wide, namespace: search}\n\
         spec: {clusterRef: {name: vectors}, storage: {s3: {bucket: some-bucket}}}\n",
    );
    // 2,000 collections of 20 shards, spread over 4 pods' tasks.
    let tasks: Vec<AgentTask> = (0..4)
        .map(|p| AgentTask {
            pod: format!("vectors-{p}"),
            task_id: format!("backup-0f6c3a52-{p}-1"),
            instance_id: String::new(),
            attempt: 1,
            shards: (p * 500..(p + 1) * 500)
                .flat_map(|c| {
                    (0..20).map(move |s| TaskShard {
                        collection: format!("tenant-embeddings-{c:04}"),
                        shard_id: s,
                    })
                })
                .collect(),
            state: AgentTaskState::Running,
            bytes_done: 0,
            shards_done: 0,
        })
        .collect();
    let shards: usize = tasks.iter().map(|t| t.shards.len()).sum();
    assert_eq!(shards, 40_000);
    let status = QdrantBackupStatus {
        phase: Some(OperationPhase::InProgress),
        tasks,
        ..Default::default()
    };
    let api: Api<QdrantBackup> = Api::namespaced(w.admin.clone(), "search");
    let body = serde_json::json!({"status": status});
    let size = serde_json::to_vec(&body).unwrap().len();
    assert!(size < 512 * 1024, "{size} bytes");
    api.patch_status("wide", &PatchParams::default(), &Patch::Merge(&body))
        .await
        .expect("the API server takes the status");
    let back = api.get("wide").await.unwrap().status.unwrap();
    assert_eq!(back.tasks, status.tasks, "every shard reads back");
}
