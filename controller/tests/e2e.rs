//! QdrantBackup and QdrantRestore scenarios that need a double (tests/real_cluster.rs
//! covers the rest on real systems): exact stream counts, a shard stream that
//! stalls on request, a target answering as another Qdrant version, and a
//! clock moved past a backup's expiry. The reconcilers in-process against the in-memory
//! Kubernetes API double, real `qdrant-agent` processes (one per simulated
//! pod, mutual TLS + token), Qdrant doubles forming one 3-node cluster with
//! replicated shards, and the real S3 server (moto).

#[path = "common/kube_double.rs"]
mod kube_double;
#[path = "common/pods.rs"]
mod pods;

use kube::api::{Api, DeleteParams};
use kube_double::KubeDouble;
use pods::{Cluster, NS, QB, QR, s3_secret};
use qdrant_agent::manifest;
use qdrant_agent::store::{ObjectStore, S3Config, S3Store, get_all};
use qdrant_operator::agent_client::ClientIdentity;
use qdrant_operator::backup::reconcile;
use qdrant_operator::crd::{AgentTaskState, OperationPhase, QdrantBackup, QdrantRestore};
use qdrant_operator::restore;
use qdrant_operator::runtime::Context;
use serde_json::json;
use sha2::Digest;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::qdrant_double::{Fault, generated_sha256, seed_for};
use test_support::s3_server::S3Server;

const MIB: u64 = 1 << 20;
const VERSION: &str = "1.18.3";

struct Env {
    kube: KubeDouble,
    client: kube::Client,
    s3: S3Server,
    bucket: String,
}

impl Env {
    fn new(tag: &str) -> Self {
        let kube = KubeDouble::default();
        let client = kube.client(NS);
        let s3 = S3Server::start().expect("S3 server");
        let bucket = s3.bucket(tag).expect("bucket");
        s3_secret(&kube, "s3-creds");
        Env {
            kube,
            client,
            s3,
            bucket,
        }
    }

    fn ctx(&self, c: &Cluster) -> Arc<Context> {
        let mut ctx = context(self.client.clone(), &c.tls);
        ctx.follow_window = Duration::from_millis(300);
        Arc::new(ctx)
    }

    fn backup(&self, name: &str, cluster: &str, extra: serde_json::Value) {
        let mut spec = json!({"clusterRef": {"name": cluster},
            "storage": {"s3": {"bucket": self.bucket, "endpoint": self.s3.endpoint,
                               "region": "us-east-1", "credentialsSecretRef": {"name": "s3-creds"}}}});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        self.kube.create(
            QB,
            &json!({"apiVersion": "qdrant.io/v1alpha1", "kind": "QdrantBackup",
                "metadata": {"name": name, "namespace": NS}, "spec": spec}),
        );
    }

    fn get(&self, name: &str) -> Option<QdrantBackup> {
        self.kube
            .get(QB, name)
            .map(|v| serde_json::from_value(v).unwrap())
    }

    /// Reconciles `name` as the controller would on each change, until
    /// `done` holds (or the object is gone).
    async fn drive(
        &self,
        ctx: &Arc<Context>,
        name: &str,
        secs: u64,
        done: impl Fn(&QdrantBackup) -> bool,
    ) -> Option<QdrantBackup> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let b = self.get(name)?;
            if done(&b) {
                return Some(b);
            }
            assert!(
                Instant::now() < deadline,
                "backup {name} did not get there: {:#?}",
                b.status
            );
            if let Err(e) = reconcile(Arc::new(b), ctx.clone()).await {
                eprintln!("reconcile error (retried): {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    fn restore_ctx(&self, c: &Cluster) -> Arc<Context> {
        let mut ctx = context(self.client.clone(), &c.tls);
        ctx.follow_window = Duration::from_millis(300);
        Arc::new(ctx)
    }

    fn restore(&self, name: &str, spec: serde_json::Value) {
        self.kube.create(
            QR,
            &json!({"apiVersion": "qdrant.io/v1alpha1", "kind": "QdrantRestore",
                "metadata": {"name": name, "namespace": NS}, "spec": spec}),
        );
    }

    /// Reconciles restore `name` until `done` holds.
    async fn drive_restore_until(
        &self,
        ctx: &Arc<Context>,
        name: &str,
        secs: u64,
        done: impl Fn(&QdrantRestore) -> bool,
    ) -> QdrantRestore {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let r: QdrantRestore =
                serde_json::from_value(self.kube.get(QR, name).expect("restore")).unwrap();
            if done(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "restore {name} did not get there: {:#?}",
                r.status
            );
            if let Err(e) = restore::reconcile(Arc::new(r), ctx.clone()).await {
                eprintln!("reconcile error (retried): {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Reconciles restore `name` until it ends.
    async fn drive_restore(&self, ctx: &Arc<Context>, name: &str, secs: u64) -> QdrantRestore {
        self.drive_restore_until(ctx, name, secs, |r| {
            matches!(
                r.status.as_ref().and_then(|s| s.phase),
                Some(OperationPhase::Completed | OperationPhase::Failed)
            )
        })
        .await
    }

    /// Backs up `cluster` as `name` and checks it completed.
    async fn completed_backup(&self, cluster: &Cluster, name: &str) -> QdrantBackup {
        self.backup(name, &cluster.name, json!({}));
        let b = self
            .drive(&self.ctx(cluster), name, 60, ended)
            .await
            .unwrap();
        assert_eq!(phase(&b), Some(OperationPhase::Completed), "{:?}", b.status);
        b
    }

    /// Whether an Event with `reason` and a note containing `needle` exists.
    fn has_event(&self, reason: &str, needle: &str) -> bool {
        self.kube
            .events(NS)
            .iter()
            .any(|(r, n)| r == reason && n.contains(needle))
    }

    /// The S3 credentials appear nowhere but in their Secret: not in any
    /// status, Event or other object, nor in the agents' logs.
    fn assert_no_credentials_leaked(&self, clusters: &[&Cluster]) {
        let mut seen = self.kube.dump_except(pods::SECRETS);
        for c in clusters {
            for a in &c.agents {
                seen.push_str(&a.log_text());
            }
        }
        for secret in [pods::S3_KEY_ID, pods::S3_SECRET] {
            assert!(!seen.contains(secret), "{secret} leaked");
        }
    }

    async fn store(&self) -> Arc<dyn ObjectStore> {
        let cfg = S3Config {
            endpoint: Some(self.s3.endpoint.clone()),
            region: Some("us-east-1".into()),
            static_credentials: Some(("test".into(), "test".into(), None)),
            ..Default::default()
        };
        Arc::new(S3Store::new(self.bucket.clone(), &cfg).await.unwrap())
    }
}

/// A reconcile context presenting the test agents' client certificate.
fn context(client: kube::Client, tls: &qdrant_operator::agent_client::AgentTls) -> Context {
    let mut ctx = Context::new(
        client,
        Arc::new(qdrant_operator::pki::Ca::generate().unwrap()),
        Arc::new(ClientIdentity::fixed(tls.clone())),
        Arc::new(qdrant_operator::runtime::metrics::Metrics::new(
            &mut prometheus_client::registry::Registry::default(),
        )),
    );
    // The S3 server here is plain http on loopback.
    ctx.storage_policy.insecure_endpoints = true;
    ctx
}

fn phase(b: &QdrantBackup) -> Option<OperationPhase> {
    b.status.as_ref().and_then(|s| s.phase)
}

fn ended(b: &QdrantBackup) -> bool {
    matches!(
        phase(b),
        Some(OperationPhase::Completed | OperationPhase::Failed)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_three_pods_stores_each_replicated_shard_once_with_a_checked_manifest() {
    let env = Env::new("e2e");
    let cluster = Cluster::start("vectors", 3, 2, VERSION).await;
    cluster.register(&env.kube, VERSION);
    let d = &cluster.doubles[0];
    let layout: [(&str, &[u64], u64); 3] = [
        ("docs", &[3 * MIB, 2 * MIB, 2 * MIB, MIB], 3),
        ("images", &[2 * MIB, MIB, MIB], 2),
        ("tags", &[MIB / 2], 1),
    ];
    for (name, sizes, rf) in layout {
        d.add_replicated_collection(name, 8, sizes, rf);
    }
    d.add_alias("kb", "docs");
    let shards = 4 + 3 + 1;

    env.backup("first", "vectors", json!({}));
    let ctx = env.ctx(&cluster);
    // The controller stops once the tasks run; a new one takes over.
    let b = env
        .drive(&ctx, "first", 30, |b| {
            phase(b) == Some(OperationPhase::InProgress)
        })
        .await
        .unwrap();
    let status = b.status.clone().unwrap();
    assert_eq!(status.progress.as_ref().unwrap().shards_total, shards);
    let planned: Vec<_> = status.tasks.iter().flat_map(|t| t.shards.clone()).collect();
    let unique: BTreeSet<_> = planned.iter().cloned().collect();
    assert_eq!(planned.len(), shards as usize, "{:?}", status.tasks);
    assert_eq!(unique.len(), planned.len(), "a shard planned twice");
    assert_eq!(status.tasks.len(), 3, "the work spreads over the 3 pods");

    let restarted = env.ctx(&cluster);
    let b = env.drive(&restarted, "first", 60, ended).await.unwrap();
    let status = b.status.clone().unwrap();
    assert_eq!(
        phase(&b),
        Some(OperationPhase::Completed),
        "{:?}\n{}",
        status,
        cluster.agents[0].log_text()
    );
    // Each shard read once from one replica, even across the controller
    // restart: replication factor 3 is stored once, not three times.
    assert_eq!(cluster.streams_opened(), shards as u64);
    assert!(
        status
            .tasks
            .iter()
            .all(|t| t.state == AgentTaskState::Succeeded && t.attempt == 1),
        "{:?}",
        status.tasks
    );

    // The manifest is in the bucket, and every object it lists holds the
    // shard's bytes.
    let store = env.store().await;
    let prefix = format!("{NS}/vectors");
    let m = manifest::read(&*store, &prefix, "first").await.unwrap();
    assert_eq!(m.qdrant_version, VERSION);
    let mut objects = 0;
    for (c, o) in m.objects() {
        let key = format!("{prefix}/first/{}", o.key);
        let bytes = get_all(&*store, &key).await.unwrap();
        let sha = hex::encode(sha2::Sha256::digest(&bytes));
        assert_eq!(sha, o.sha256, "{key}");
        let shard = o.shard_id.unwrap();
        let (_, sizes, _) = layout.iter().find(|(n, _, _)| *n == c.name).unwrap();
        let size = sizes[shard as usize];
        assert_eq!(sha, generated_sha256(seed_for(&c.name, shard), size));
        objects += 1;
    }
    assert_eq!(objects, shards);
    let docs = m.collections.iter().find(|c| c.name == "docs").unwrap();
    assert_eq!(docs.aliases, vec!["kb".to_string()]);
    // The topology and every shard's replicas are recorded.
    let nodes: Vec<_> = m
        .nodes
        .iter()
        .map(|n| (n.node.as_str(), n.peer_id))
        .collect();
    assert_eq!(
        nodes,
        [
            ("vectors-0", Some(101)),
            ("vectors-1", Some(102)),
            ("vectors-2", Some(103))
        ]
    );
    assert_eq!(docs.placement.len(), 4);
    assert!(docs.placement.iter().all(|s| s.replicas.len() == 3));
    assert_eq!(
        status.size_bytes,
        Some(m.objects().map(|(_, o)| o.size).sum::<u64>())
    );
    assert_eq!(
        status.s3_path.as_deref(),
        Some(format!("s3://{}/{prefix}/first", env.bucket).as_str())
    );
    let results: usize = status.collections.iter().map(|c| c.shards.len()).sum();
    assert_eq!(results, shards as usize);
    assert!(store.list_multipart("").await.unwrap().is_empty());
    assert!(env.has_event("Started", "8 shards of 3 collections from 3 pods"));
    assert!(env.has_event("Completed", "8 objects"));
    env.assert_no_credentials_leaked(&[&cluster]);

    // Retain (the default): deleting the resource keeps the data.
    let api: Api<QdrantBackup> = Api::namespaced(env.client.clone(), NS);
    api.delete("first", &DeleteParams::default()).await.unwrap();
    assert!(env.drive(&ctx, "first", 10, |_| false).await.is_none());
    assert!(manifest::read(&*store, &prefix, "first").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_whose_shard_has_no_other_replica_fails_the_backup_and_leaves_nothing() {
    let env = Env::new("kill");
    let mut cluster = Cluster::start("vectors", 3, 5, VERSION).await;
    cluster.register(&env.kube, VERSION);
    let d = &cluster.doubles[0];
    // Replication factor 1: shard i lives on pod i only.
    d.add_replicated_collection("docs", 8, &[MIB, MIB, 20 * MIB], 1);
    // Pod 2's shard stops after 9 MiB: one part is uploaded, the upload open.
    cluster.doubles[2].set_fault("docs", 2, Fault::StallAfter(9 * MIB));

    env.backup("doomed", "vectors", json!({}));
    let ctx = env.ctx(&cluster);
    env.drive(&ctx, "doomed", 30, |b| {
        b.status.as_ref().is_some_and(|s| {
            s.tasks
                .iter()
                .any(|t| t.pod == "vectors-2" && t.bytes_done >= 8 * MIB)
        })
    })
    .await
    .unwrap();
    let store = env.store().await;
    assert!(
        !store.list_multipart("").await.unwrap().is_empty(),
        "the stalled shard's upload is open"
    );
    cluster.agents[2].kill();

    let b = env.drive(&ctx, "doomed", 60, ended).await.unwrap();
    let status = b.status.clone().unwrap();
    assert_eq!(phase(&b), Some(OperationPhase::Failed));
    let ready = &status.conditions[0];
    assert_eq!(ready.reason, "NoActiveReplica", "{status:?}");
    let error = status.error.unwrap();
    assert!(error.contains("shard 2 of collection \"docs\""), "{error}");
    assert!(error.contains("vectors-2"), "{error}");
    // Nothing half-written remains: no open upload, no object.
    assert!(store.list_multipart("").await.unwrap().is_empty());
    let left = store.list(&format!("{NS}/vectors/doomed")).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert!(env.has_event("Failed", "NoActiveReplica: "));
    env.assert_no_credentials_leaked(&[&cluster]);
}

/// Every object is uploaded, then the store refuses the manifest for a
/// while (503 SlowDown, more times than one call's retries): the backup
/// waits and tries the commit again instead of failing and deleting a
/// complete upload, and completes once the store takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_the_store_refuses_for_a_while_is_retried_and_nothing_is_discarded() {
    let env = Env::new("commit-retry");
    let cluster = Cluster::start("vectors", 2, 30, VERSION).await;
    cluster.register(&env.kube, VERSION);
    cluster.doubles[0].add_replicated_collection("docs", 8, &[MIB, 2 * MIB], 1);
    let dir = tempfile::tempdir().unwrap();
    let proxy = test_support::s3_server::FaultProxy::start(
        &env.s3.endpoint,
        "manifest-unavailable",
        dir.path(),
    )
    .unwrap();
    env.backup(
        "flaky",
        "vectors",
        json!({"storage": {"s3": {"bucket": env.bucket, "endpoint": proxy.endpoint,
            "region": "us-east-1", "credentialsSecretRef": {"name": "s3-creds"}}}}),
    );
    let b = env
        .drive(&env.ctx(&cluster), "flaky", 120, ended)
        .await
        .unwrap();
    let status = b.status.clone().unwrap();
    assert_eq!(phase(&b), Some(OperationPhase::Completed), "{status:?}");
    assert!(proxy.injected() >= 6, "the store refused the manifest");
    assert!(
        env.has_event("CommitRetrying", "writing the manifest"),
        "{:?}",
        env.kube.events(NS)
    );
    // The backup is whole: every object of its manifest restores.
    let store = env.store().await;
    let prefix = format!("{NS}/vectors");
    let m = manifest::read(&*store, &prefix, "flaky").await.unwrap();
    for (c, o) in m.objects() {
        let bytes = get_all(&*store, &format!("{prefix}/flaky/{}", o.key))
            .await
            .unwrap();
        let shard = o.shard_id.unwrap();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            generated_sha256(seed_for(&c.name, shard), [MIB, 2 * MIB][shard as usize])
        );
    }
    assert_eq!(m.objects().count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_into_another_minor_version_or_without_a_manifest_fails_and_touches_nothing() {
    let env = Env::new("refuse");
    let source = Cluster::start("vectors", 2, 20, VERSION).await;
    source.register(&env.kube, VERSION);
    source.doubles[0].add_replicated_collection("docs", 8, &[MIB, MIB], 1);
    env.completed_backup(&source, "first").await;

    let older = Cluster::start("older", 2, 22, "1.17.2").await;
    older.register(&env.kube, "1.17.2");
    env.restore(
        "across",
        json!({"backupRef": {"name": "first"}, "targetClusterRef": {"name": "older"}}),
    );
    let r = env
        .drive_restore(&env.restore_ctx(&older), "across", 60)
        .await;
    let status = r.status.unwrap();
    assert_eq!(status.phase, Some(OperationPhase::Failed));
    assert_eq!(
        status.conditions[0].reason, "VersionMismatch",
        "{status:#?}"
    );
    let error = status.error.unwrap();
    assert!(
        error.contains("1.18.3") && error.contains("1.17.2"),
        "{error}"
    );
    for d in &older.doubles {
        assert!(d.collection_names().is_empty());
        assert!(d.uploads().is_empty());
    }

    env.restore(
        "nothing-there",
        json!({"source": {"s3": {"bucket": env.bucket, "endpoint": env.s3.endpoint,
                 "region": "us-east-1", "credentialsSecretRef": {"name": "s3-creds"},
                 "path": format!("{NS}/vectors/no-such-backup")}},
               "targetClusterRef": {"name": "vectors"}}),
    );
    let r = env
        .drive_restore(&env.restore_ctx(&source), "nothing-there", 30)
        .await;
    let status = r.status.unwrap();
    assert_eq!(status.phase, Some(OperationPhase::Failed));
    assert_eq!(
        status.conditions[0].reason, "ManifestMissing",
        "{status:#?}"
    );
    assert!(source.doubles.iter().all(|d| d.uploads().is_empty()));
    assert!(env.has_event("Failed", "ManifestMissing: "));
}

fn far_future() -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 40)
}

/// `spec.verify`: the store hands back different bytes than were uploaded
/// (a byte flipped on every read, as rotted storage would): the backup does
/// not pass for Completed; it fails naming the object, and is deleted like
/// any failed backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_that_does_not_read_back_as_written_fails_its_verification() {
    let env = Env::new("verify-fail");
    let cluster = Cluster::start("vectors", 2, 33, VERSION).await;
    cluster.register(&env.kube, VERSION);
    cluster.doubles[0].add_replicated_collection("docs", 8, &[MIB, MIB], 1);
    let dir = tempfile::tempdir().unwrap();
    let proxy =
        test_support::s3_server::FaultProxy::start(&env.s3.endpoint, "corrupt-read", dir.path())
            .unwrap();
    env.backup(
        "rotten",
        "vectors",
        json!({"verify": true, "storage": {"s3": {"bucket": env.bucket, "endpoint": proxy.endpoint,
            "region": "us-east-1", "credentialsSecretRef": {"name": "s3-creds"}}}}),
    );
    let b = env
        .drive(&env.ctx(&cluster), "rotten", 60, ended)
        .await
        .unwrap();
    let status = b.status.unwrap();
    assert_eq!(status.phase, Some(OperationPhase::Failed), "{status:#?}");
    assert_eq!(status.conditions[0].reason, "ChecksumMismatch");
    let error = status.error.unwrap();
    assert!(
        error.contains("did not check out") && error.contains(".snapshot"),
        "{error}"
    );
    let v = status.verification.expect("the verification ran");
    assert_eq!(v.task.state, AgentTaskState::Failed);
    assert!(v.completion_time.is_some());
    assert!(proxy.injected() > 0);
    assert!(env.has_event("Failed", "ChecksumMismatch"));
    // Nothing that reads back wrong stays to be restored later.
    let store = env.store().await;
    let left = store.list(&format!("{NS}/vectors/rotten/")).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// The QdrantCluster is deleted mid-backup (its pods, agents included, go
/// with it): the backup fails saying where what it wrote is left and the
/// command that deletes it, and that command, run as written, leaves
/// nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_whose_cluster_is_deleted_says_what_is_left_and_how_to_delete_it() {
    use qdrant_operator::crd::QdrantCluster;
    let env = Env::new("orphan");
    let mut cluster = Cluster::start("vectors", 2, 36, VERSION).await;
    cluster.register(&env.kube, VERSION);
    cluster.doubles[0].add_replicated_collection("docs", 8, &[MIB, 20 * MIB], 1);
    cluster.doubles[1].set_fault("docs", 1, Fault::StallAfter(9 * MIB));
    let ctx = env.ctx(&cluster);
    env.backup("orphaned", "vectors", json!({}));
    env.drive(&ctx, "orphaned", 30, |b| {
        b.status
            .as_ref()
            .is_some_and(|s| s.tasks.iter().any(|t| t.bytes_done >= 8 * MIB))
    })
    .await
    .unwrap();
    for a in &mut cluster.agents {
        a.kill();
    }
    Api::<QdrantCluster>::namespaced(env.client.clone(), NS)
        .delete("vectors", &DeleteParams::default())
        .await
        .unwrap();
    let b = env.drive(&ctx, "orphaned", 60, ended).await.unwrap();
    let status = b.status.unwrap();
    assert_eq!(status.phase, Some(OperationPhase::Failed));
    let error = status.error.unwrap();
    let root = format!("s3://{}/{NS}/vectors/orphaned/", env.bucket);
    assert!(error.contains(&root), "{error}");
    let command = error
        .split("delete it with: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no command in: {error}"));
    assert!(env.has_event("ObjectsLeft", command));
    let store = env.store().await;
    assert!(
        !store.list_multipart("").await.unwrap().is_empty(),
        "the killed agent's upload is open"
    );
    // The command as written, with the user's S3 credentials.
    let args: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(args[0], "qdrant-agent");
    let out = std::process::Command::new(pods::agent_bin())
        .args(&args[1..])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(store.list_multipart("").await.unwrap().is_empty());
    assert!(
        store
            .list(&format!("{NS}/vectors/orphaned/"))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_backup_cancels_its_tasks_and_an_expired_one_takes_its_objects() {
    let env = Env::new("delete");
    let cluster = Cluster::start("vectors", 2, 26, VERSION).await;
    cluster.register(&env.kube, VERSION);
    let d = &cluster.doubles[0];
    d.add_replicated_collection("docs", 8, &[MIB, 20 * MIB], 1);
    cluster.doubles[1].set_fault("docs", 1, Fault::StallAfter(9 * MIB));
    let ctx = env.ctx(&cluster);
    let store = env.store().await;
    let api: Api<QdrantBackup> = Api::namespaced(env.client.clone(), NS);

    env.backup("running", "vectors", json!({}));
    env.drive(&ctx, "running", 30, |b| {
        b.status
            .as_ref()
            .is_some_and(|s| s.tasks.iter().any(|t| t.bytes_done >= 8 * MIB))
    })
    .await
    .unwrap();
    api.delete("running", &DeleteParams::default())
        .await
        .unwrap();
    assert!(env.drive(&ctx, "running", 30, |_| false).await.is_none());
    // The stalled task was cancelled: its upload aborted, nothing left.
    assert!(store.list_multipart("").await.unwrap().is_empty());
    assert!(
        store
            .list(&format!("{NS}/vectors/running"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(env.has_event("Deleted", "running"));

    // Delete policy with retention: once expired, the resource and its
    // objects both go.
    cluster.doubles[1].clear_fault("docs", 1);
    env.backup(
        "short-lived",
        "vectors",
        json!({"deletionPolicy": "Delete", "retentionDays": 30}),
    );
    let b = env.drive(&ctx, "short-lived", 30, ended).await.unwrap();
    assert_eq!(phase(&b), Some(OperationPhase::Completed));
    let prefix = format!("{NS}/vectors");
    assert!(
        manifest::read(&*store, &prefix, "short-lived")
            .await
            .is_ok()
    );
    let later = {
        let mut c = context(env.client.clone(), &cluster.tls);
        c.now = far_future;
        Arc::new(c)
    };
    assert!(
        env.drive(&later, "short-lived", 30, |_| false)
            .await
            .is_none()
    );
    assert!(
        store
            .list(&format!("{prefix}/short-lived"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(env.has_event("Expired", "retentionDays (30)"));
}
