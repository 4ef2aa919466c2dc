//! QdrantBackup end to end: the reconciler in-process against the in-memory
//! Kubernetes API double, real `qdrant-agent` processes (one per simulated
//! pod, mutual TLS + token), Qdrant doubles forming one 3-node cluster with
//! replicated shards, and the real S3 server (moto).

#[path = "common/kube_double.rs"]
mod kube_double;
#[path = "common/pods.rs"]
mod pods;

use kube::api::{Api, DeleteParams};
use kube_double::KubeDouble;
use pods::{Cluster, NS, QB, s3_secret};
use qdrant_agent::manifest;
use qdrant_agent::store::{ObjectStore, S3Config, S3Store, get_all};
use qdrant_operator::backup_controller::{Context, reconcile};
use qdrant_operator::crd::{AgentTaskState, OperationPhase, QdrantBackup};
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
        let mut ctx = Context::new(self.client.clone(), c.tls.clone());
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
    let events: Vec<String> = env.kube.events(NS).into_iter().map(|(r, _)| r).collect();
    assert!(events.contains(&"Started".to_string()), "{events:?}");
    assert!(events.contains(&"Completed".to_string()), "{events:?}");

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
    assert!(
        !error.contains("test"),
        "no credential in the error: {error}"
    );
    // Nothing half-written remains: no open upload, no object.
    assert!(store.list_multipart("").await.unwrap().is_empty());
    let left = store.list(&format!("{NS}/vectors/doomed")).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    let events = env.kube.events(NS);
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "Failed" && n.starts_with("NoActiveReplica")),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_loses_its_task_and_the_shards_go_to_a_replica_on_the_next_attempt() {
    let env = Env::new("retry");
    let mut cluster = Cluster::start("vectors", 3, 8, VERSION).await;
    cluster.register(&env.kube, VERSION);
    let d = &cluster.doubles[0];
    d.add_replicated_collection("docs", 8, &[12 * MIB, 12 * MIB, 12 * MIB], 2);
    // Whatever pod 2 backs up stalls after its first part.
    for s in 0..3 {
        cluster.doubles[2].set_fault("docs", s, Fault::StallAfter(9 * MIB));
    }
    env.backup("second", "vectors", json!({}));
    let ctx = env.ctx(&cluster);
    env.drive(&ctx, "second", 30, |b| {
        b.status.as_ref().is_some_and(|s| {
            s.tasks
                .iter()
                .any(|t| t.pod == "vectors-2" && t.bytes_done >= 8 * MIB)
        })
    })
    .await
    .unwrap();
    // The agent restarts (a new instance, its tasks gone); Qdrant is fine now.
    for s in 0..3 {
        cluster.doubles[2].clear_fault("docs", s);
    }
    cluster.start_agent(2);

    let b = env.drive(&ctx, "second", 60, ended).await.unwrap();
    let status = b.status.clone().unwrap();
    assert_eq!(phase(&b), Some(OperationPhase::Completed), "{status:?}");
    let lost: Vec<_> = status
        .tasks
        .iter()
        .filter(|t| t.state == AgentTaskState::Lost)
        .collect();
    assert_eq!(lost.len(), 1, "{:?}", status.tasks);
    assert_eq!(lost[0].pod, "vectors-2");
    assert!(status.tasks.iter().any(|t| t.attempt == 2));
    let store = env.store().await;
    let prefix = format!("{NS}/vectors");
    let m = manifest::read(&*store, &prefix, "second").await.unwrap();
    assert_eq!(m.objects().count(), 3);
    // The lost task's open upload was aborted; nothing but the manifest's
    // objects (and the manifest) is under the backup.
    assert!(store.list_multipart("").await.unwrap().is_empty());
    let listed = store.list(&format!("{prefix}/second/")).await.unwrap();
    assert_eq!(listed.len(), 4, "{listed:?}");
    let events = env.kube.events(NS);
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "TaskLost" && n.contains("vectors-2")),
        "{events:?}"
    );
}
