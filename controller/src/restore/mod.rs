//! The QdrantRestore reconciler. A restore runs in stages, each a set of
//! agent tasks (`StartRestore` with a stage):
//!
//! - Verify: one agent checks the backup (manifest, Qdrant minor version,
//!   every object's sha256) and creates the collections with their saved
//!   config, so the shard count and replication factor come back whatever
//!   the target's node count;
//! - Upload: from the new collections' shard placement, ONE pod holding a
//!   replica of each shard uploads it (`priority=snapshot`); Qdrant copies
//!   it to the other replicas itself;
//! - Finish: one agent re-creates the aliases and waits until every
//!   collection is green with every replica Active.
//!
//! A target with a single pod gets one task doing all three. A failure
//! after the collections were created deletes them again (Rollback), so a
//! half-restored collection never passes for a restored one.

use crate::agent_client::Client;
use crate::agents::{Agents, Observed, agent_pods, status_reason, storage_target};
use crate::backup::decide::cluster_prefix;
use crate::backup::plan::{from_agent, plan};
use crate::crd::{
    AgentTask, AgentTaskState, ClusterPhase, CollectionResult, OperationPhase, QdrantBackup,
    QdrantCluster, QdrantRestore, QdrantRestoreStatus, RestoreStage, S3Storage, ShardObject,
    TaskProgress, TaskShard,
};
use crate::runtime::{self, Context, Error, Halt, operation, report};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use qdrant_agent_proto::v1::{
    self as pb, CollectionSelection, GetPlacementRequest, ReadManifestRequest, StartRestoreRequest,
    StorageTarget, TaskPhase,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub const FINALIZER: &str = "qdrant.io/restore";

pub async fn reconcile(r: Arc<QdrantRestore>, ctx: Arc<Context>) -> Result<Action, Error> {
    runtime::finalized(
        r,
        &ctx,
        FINALIZER,
        async |o: Arc<QdrantRestore>, ctx: &Context| apply(&o, ctx).await,
        async |o: Arc<QdrantRestore>, ctx: &Context| cleanup(&o, ctx).await,
    )
    .await
}

fn status_of(r: &QdrantRestore) -> QdrantRestoreStatus {
    r.status.clone().unwrap_or_default()
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

/// The source of a restore: a Completed QdrantBackup (same namespace) or a
/// raw S3 path.
async fn source(r: &QdrantRestore, ctx: &Context) -> Result<Source, Halt> {
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
    let backups: Api<QdrantBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(backup) = backups.get_opt(&b.name).await? else {
        return Err(Halt::fail(
            "BackupNotFound",
            format!("QdrantBackup {ns}/{} not found", b.name),
        ));
    };
    match backup.status.as_ref().and_then(|s| s.phase) {
        Some(OperationPhase::Completed) => {}
        Some(OperationPhase::Failed) => {
            return Err(Halt::fail(
                "BackupFailed",
                format!("QdrantBackup {} failed; it cannot be restored", b.name),
            ));
        }
        _ => {
            return Err(Halt::Wait {
                reason: "BackupNotComplete",
                message: format!("QdrantBackup {} is not Completed yet", b.name),
            });
        }
    }
    Ok(Source {
        prefix: cluster_prefix(
            backup.spec.storage.s3.prefix.as_deref(),
            &ns,
            &backup.spec.cluster_ref.name,
        ),
        name: backup.name_any(),
        storage: backup.spec.storage.s3.clone(),
    })
}

/// The collections of a backup's manifest, as far as planning needs them.
#[derive(serde::Deserialize)]
struct ManifestView {
    collections: Vec<CollectionView>,
}

#[derive(serde::Deserialize)]
struct CollectionView {
    name: String,
    #[serde(default)]
    config: serde_json::Value,
}

async fn apply(r: &QdrantRestore, ctx: &Context) -> Result<Action, Error> {
    let status = status_of(r);
    if matches!(
        status.phase,
        Some(OperationPhase::Completed | OperationPhase::Failed)
    ) {
        return Ok(Action::await_change());
    }
    let ns = r.namespace().unwrap_or_default();
    let clusters: Api<QdrantCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let cluster = clusters.get_opt(&r.spec.target_cluster_ref.name).await?;
    let started = status.stage.is_some();
    let result = match &cluster {
        None if started => Err(Halt::fail(
            "ClusterNotFound",
            format!(
                "QdrantCluster {} was deleted during the restore",
                r.spec.target_cluster_ref.name
            ),
        )),
        None => Err(Halt::Wait {
            reason: "ClusterNotFound",
            message: format!(
                "QdrantCluster {} not found in namespace {ns}",
                r.spec.target_cluster_ref.name
            ),
        }),
        Some(c) if !c.spec.agent.enabled => Err(Halt::fail(
            "AgentDisabled",
            format!(
                "QdrantCluster {} runs without the backup agent; set spec.agent.enabled: true",
                c.name_any()
            ),
        )),
        Some(c)
            if !started
                && c.status.as_ref().and_then(|s| s.phase) != Some(ClusterPhase::Running) =>
        {
            Err(Halt::Wait {
                reason: "ClusterNotReady",
                message: format!("QdrantCluster {} is not Running", c.name_any()),
            })
        }
        Some(c) => drive(r, ctx, c).await,
    };
    match result {
        Ok(a) => Ok(a),
        Err(Halt::Wait { reason, message }) => {
            operation::wait(r, ctx, reason, message).await?;
            Ok(Action::requeue(ctx.wait_delay(r)))
        }
        Err(Halt::Fail { reason, message }) => {
            fail(r, ctx, cluster.as_ref(), &reason, message).await
        }
        Err(Halt::Kube(e)) => Err(e.into()),
    }
}

async fn drive(r: &QdrantRestore, ctx: &Context, cluster: &QdrantCluster) -> Result<Action, Halt> {
    let status = status_of(r);
    let started = status.stage.is_some();
    let src = source(r, ctx).await;
    let src = if started {
        src.map_err(Halt::into_fail)?
    } else {
        src?
    };
    let ns = r.namespace().unwrap_or_default();
    let storage = storage_target(&ctx.client, &ns, &src.storage, &src.prefix).await;
    let storage = if started {
        storage.map_err(Halt::into_fail)?
    } else {
        storage?
    };
    let agents = Agents::of(&ctx.client, cluster, &ctx.tls.get()).await;
    let agents = if started {
        agents.map_err(Halt::into_fail)?
    } else {
        agents?
    };
    match status.stage {
        None => start(r, ctx, &agents, &storage, &src).await,
        Some(RestoreStage::Done) => Ok(Action::await_change()),
        Some(stage) => follow(r, ctx, &agents, &storage, &src, stage).await,
    }
}

/// `restore-<uid>-<stage>-<pod>`: one task per stage and pod.
fn task_id(r: &QdrantRestore, stage: impl std::fmt::Debug, pod: &str) -> String {
    format!(
        "restore-{}-{}-{pod}",
        r.uid().unwrap_or_default(),
        format!("{stage:?}").to_lowercase()
    )
}

/// The collections to restore: the spec's list, or all in the manifest.
fn selection(r: &QdrantRestore, manifest: &ManifestView) -> Vec<String> {
    if r.spec.collections.is_empty() {
        manifest
            .collections
            .iter()
            .map(|c| c.name.clone())
            .collect()
    } else {
        r.spec.collections.clone()
    }
}

fn target_name<'a>(r: &'a QdrantRestore, c: &'a str) -> &'a str {
    r.spec
        .collection_mapping
        .get(c)
        .map(String::as_str)
        .unwrap_or(c)
}

fn request(
    r: &QdrantRestore,
    storage: &StorageTarget,
    src: &Source,
    t: &AgentTask,
    stage: pb::RestoreStage,
) -> StartRestoreRequest {
    let mut by_collection: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for s in &t.shards {
        let e = by_collection.entry(&s.collection).or_default();
        if stage == pb::RestoreStage::Upload {
            e.push(s.shard_id);
        }
    }
    let names: Vec<&str> = by_collection.keys().copied().collect();
    StartRestoreRequest {
        task_id: t.task_id.clone(),
        storage: Some(storage.clone()),
        backup_name: src.name.clone(),
        collections: by_collection
            .into_iter()
            .map(|(c, shard_ids)| CollectionSelection {
                collection: c.to_string(),
                shard_ids,
            })
            .collect(),
        rename: r
            .spec
            .collection_mapping
            .iter()
            .filter(|(k, _)| names.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        // Verified once, in the Verify stage (or the single-node task).
        skip_verify: stage == pb::RestoreStage::Upload || stage == pb::RestoreStage::Finish,
        stage: stage as i32,
        ..Default::default()
    }
}

fn proto_stage(stage: RestoreStage) -> pb::RestoreStage {
    match stage {
        RestoreStage::All => pb::RestoreStage::Unspecified,
        RestoreStage::Verify => pb::RestoreStage::Create,
        RestoreStage::Upload => pb::RestoreStage::Upload,
        RestoreStage::Finish | RestoreStage::Done => pb::RestoreStage::Finish,
    }
}

/// One task on the first pod covering whole collections (shard 0 stands
/// for "all shards" in a stage that does not upload).
fn whole_collections_task(
    r: &QdrantRestore,
    stage: impl std::fmt::Debug,
    pod: &str,
    instance_id: String,
    collections: &[String],
) -> AgentTask {
    AgentTask {
        pod: pod.to_string(),
        task_id: task_id(r, stage, pod),
        instance_id,
        attempt: 1,
        shards: collections
            .iter()
            .map(|c| TaskShard {
                collection: c.clone(),
                shard_id: 0,
            })
            .collect(),
        state: AgentTaskState::Running,
        bytes_done: 0,
        shards_done: 0,
    }
}

async fn start(
    r: &QdrantRestore,
    ctx: &Context,
    agents: &Agents,
    storage: &StorageTarget,
    src: &Source,
) -> Result<Action, Halt> {
    let (seen, unreachable) = agents.survey(&[]).await?;
    if seen.len() < agents.pods.len() || seen.is_empty() {
        return Err(Halt::Wait {
            reason: "AgentUnreachable",
            message: if unreachable.is_empty() {
                format!(
                    "cluster {} has no ready pod",
                    r.spec.target_cluster_ref.name
                )
            } else {
                unreachable.join("; ")
            },
        });
    }
    let first = &seen[0];
    let mut c = agents.connect(&first.pod).await.map_err(|m| Halt::Wait {
        reason: "AgentUnreachable",
        message: m,
    })?;
    let manifest = c
        .read_manifest(ReadManifestRequest {
            storage: Some(storage.clone()),
            backup_name: src.name.clone(),
        })
        .await
        .map_err(|s| {
            let (reason, message) = status_reason(&s);
            // The store or the agent may be back soon; anything else is final.
            if s.code() == tonic::Code::Unavailable {
                Halt::Wait {
                    reason: "StorageUnavailable",
                    message,
                }
            } else {
                Halt::fail(reason, message)
            }
        })?
        .into_inner();
    let manifest: ManifestView = serde_json::from_str(&manifest.manifest_json)
        .map_err(|e| Halt::fail("ManifestInvalid", format!("{}: {e}", src.s3_path())))?;
    let wanted = selection(r, &manifest);
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
        if custom && seen.len() > 1 {
            return Err(Halt::fail(
                "Unsupported",
                format!(
                    "collection {c:?} uses custom sharding, which restores into a single-node cluster only (or with the agent CLI)"
                ),
            ));
        }
    }
    for k in r.spec.collection_mapping.keys() {
        if !wanted.contains(k) {
            return Err(Halt::fail(
                "InvalidSpec",
                format!("spec.collectionMapping names {k:?}, which is not being restored"),
            ));
        }
    }
    let previous = status_of(r);
    let now = (ctx.now)();
    // A single node takes the whole restore in one task.
    let stage = if seen.len() == 1 {
        RestoreStage::All
    } else {
        RestoreStage::Verify
    };
    let task = whole_collections_task(r, stage, &first.pod, first.instance_id.clone(), &wanted);
    let message = format!(
        "restoring {} collections from {} into {} pods",
        wanted.len(),
        src.s3_path(),
        seen.len()
    );
    let status = QdrantRestoreStatus {
        phase: Some(OperationPhase::InProgress),
        start_time: Some(Time(now)),
        stage: Some(stage),
        s3_path: Some(src.s3_path()),
        tasks: vec![task.clone()],
        conditions: vec![report::ready(
            false,
            "Verifying",
            message.clone(),
            now,
            &previous.conditions,
            r.metadata.generation,
        )],
        observed_generation: r.metadata.generation,
        ..Default::default()
    };
    operation::write(ctx, r, &status).await?;
    report::event(
        &ctx.recorder,
        &r.object_ref(&()),
        EventType::Normal,
        "Started",
        "Restore",
        message,
    )
    .await;
    let req = request(r, storage, src, &task, proto_stage(stage));
    if let Err(e) = c.start_restore(req).await {
        tracing::warn!(restore = %r.name_any(), error = %e.message(), "could not start a task; the next reconcile retries");
    }
    Ok(Action::requeue(Duration::from_secs(1)))
}

async fn follow(
    r: &QdrantRestore,
    ctx: &Context,
    agents: &Agents,
    storage: &StorageTarget,
    src: &Source,
    stage: RestoreStage,
) -> Result<Action, Halt> {
    let mut status = status_of(r);
    let pstage = proto_stage(stage);
    let seen = futures::future::join_all(status.tasks.iter().map(|t| {
        agents.observe(t, ctx.follow_window, async move |c: &mut Client| {
            let res = c.start_restore(request(r, storage, src, t, pstage)).await?;
            Ok(res.into_inner())
        })
    }))
    .await;
    let mut finished: Vec<pb::Task> = Vec::new();
    for (t, s) in status.tasks.iter_mut().zip(seen) {
        match s {
            // A restore is not re-planned: its collections are rolled back
            // and it fails, saying which agent went away.
            Observed::Lost(why) => return Err(Halt::fail("AgentLost", why)),
            Observed::Task(task) => {
                t.bytes_done = task.bytes_done;
                t.shards_done = task.shards_done;
                match task.phase() {
                    TaskPhase::Succeeded => {
                        t.state = AgentTaskState::Succeeded;
                        finished.push(*task);
                    }
                    TaskPhase::Failed | TaskPhase::Cancelled => {
                        let reason = if task.error_reason.is_empty() {
                            "TaskFailed".to_string()
                        } else {
                            task.error_reason.clone()
                        };
                        return Err(Halt::fail(
                            reason,
                            format!("the agent of pod {}: {}", t.pod, task.error),
                        ));
                    }
                    _ => {}
                }
            }
        }
    }
    let uploads = matches!(stage, RestoreStage::Upload | RestoreStage::All);
    if uploads {
        let total = status.progress.as_ref().map_or(0, |p| p.shards_total);
        status.progress = Some(TaskProgress {
            bytes_done: status.tasks.iter().map(|t| t.bytes_done).sum(),
            shards_done: status.tasks.iter().map(|t| t.shards_done).sum(),
            shards_total: total.max(finished.iter().map(|t| t.shards_total).sum()),
        });
    }
    if finished.len() < status.tasks.len() {
        operation::write(ctx, r, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // The stage is done.
    if uploads {
        status.collections = results(&status.tasks, &finished);
    }
    match stage {
        RestoreStage::Verify => upload_stage(r, ctx, agents, storage, src, status).await,
        RestoreStage::Upload => finish_stage(r, ctx, agents, storage, src, status).await,
        _ => complete(r, ctx, status).await,
    }
}

/// Uploads done: one agent re-creates the aliases and waits for green.
async fn finish_stage(
    r: &QdrantRestore,
    ctx: &Context,
    agents: &Agents,
    storage: &StorageTarget,
    src: &Source,
    mut status: QdrantRestoreStatus,
) -> Result<Action, Halt> {
    let (seen, unreachable) = agents.survey(&[]).await?;
    let first = seen
        .first()
        .ok_or_else(|| Halt::fail("AgentUnreachable", unreachable.join("; ")))?;
    let task = whole_collections_task(
        r,
        RestoreStage::Finish,
        &first.pod,
        first.instance_id.clone(),
        &sources(&status.tasks),
    );
    status.stage = Some(RestoreStage::Finish);
    status.conditions = vec![report::ready(
        false,
        "Finishing",
        "re-creating aliases; waiting until every replica is Active and each collection is green"
            .into(),
        (ctx.now)(),
        &status.conditions,
        r.metadata.generation,
    )];
    status.tasks = vec![task.clone()];
    operation::write(ctx, r, &status).await?;
    if let Ok(mut c) = agents.connect(&first.pod).await {
        let _ = c
            .start_restore(request(r, storage, src, &task, pb::RestoreStage::Finish))
            .await;
    }
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// The backup's names of the collections the tasks restore.
fn sources(tasks: &[AgentTask]) -> Vec<String> {
    let mut v: Vec<String> = tasks
        .iter()
        .flat_map(|t| t.shards.iter().map(|s| s.collection.clone()))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Per target collection, the shards restored and the pod that uploaded each.
fn results(tasks: &[AgentTask], finished: &[pb::Task]) -> Vec<CollectionResult> {
    let pod_of: HashMap<&str, &str> = tasks
        .iter()
        .map(|t| (t.task_id.as_str(), t.pod.as_str()))
        .collect();
    let mut by: BTreeMap<String, Vec<ShardObject>> = BTreeMap::new();
    for t in finished {
        for s in &t.results {
            by.entry(s.collection.clone())
                .or_default()
                .push(ShardObject {
                    shard_id: s.shard_id,
                    key: s.key.clone(),
                    size: s.size,
                    sha256: s.sha256.clone(),
                    pod: pod_of.get(t.task_id.as_str()).unwrap_or(&"").to_string(),
                    peer_id: Some(t.peer_id).filter(|&p| p != 0),
                });
        }
    }
    by.into_iter()
        .map(|(name, mut shards)| {
            shards.sort_by_key(|s| s.shard_id);
            CollectionResult { name, shards }
        })
        .collect()
}

/// The collections exist: read where their shards landed and give each
/// shard to ONE pod holding a replica of it.
async fn upload_stage(
    r: &QdrantRestore,
    ctx: &Context,
    agents: &Agents,
    storage: &StorageTarget,
    src: &Source,
    mut status: QdrantRestoreStatus,
) -> Result<Action, Halt> {
    let sources = sources(&status.tasks);
    let targets: Vec<String> = sources
        .iter()
        .map(|c| target_name(r, c).to_string())
        .collect();
    let (seen, unreachable) = agents.survey(&targets).await?;
    if seen.is_empty() {
        return Err(Halt::fail("AgentUnreachable", unreachable.join("; ")));
    }
    let mut c = agents
        .connect(&seen[0].pod)
        .await
        .map_err(|m| Halt::fail("AgentUnreachable", m))?;
    let placement = c
        .get_placement(GetPlacementRequest {
            collections: targets.clone(),
        })
        .await
        .map_err(|s| {
            let (reason, message) = status_reason(&s);
            Halt::fail(reason, message)
        })?
        .into_inner();
    let planned = plan(
        &from_agent(&placement),
        &agent_pods(&seen),
        &Default::default(),
    )
    .map_err(|e| Halt::fail(e.reason(), e.to_string()))?;
    let back: HashMap<String, String> = sources
        .iter()
        .map(|s| (target_name(r, s).to_string(), s.clone()))
        .collect();
    let mut tasks = Vec::new();
    let mut total = 0;
    for (pod, shards) in planned {
        total += shards.len() as u32;
        tasks.push(AgentTask {
            task_id: task_id(r, RestoreStage::Upload, &pod),
            instance_id: seen
                .iter()
                .find(|s| s.pod == pod)
                .map(|s| s.instance_id.clone())
                .unwrap_or_default(),
            attempt: 1,
            shards: shards
                .into_iter()
                .map(|(c, shard_id)| TaskShard {
                    collection: back.get(&c).cloned().unwrap_or(c),
                    shard_id,
                })
                .collect(),
            state: AgentTaskState::Running,
            bytes_done: 0,
            shards_done: 0,
            pod,
        });
    }
    status.stage = Some(RestoreStage::Upload);
    status.conditions = vec![report::ready(
        false,
        "Uploading",
        format!("uploading {total} shards from {} pods", tasks.len()),
        (ctx.now)(),
        &status.conditions,
        r.metadata.generation,
    )];
    status.progress = Some(TaskProgress {
        bytes_done: 0,
        shards_done: 0,
        shards_total: total,
    });
    status.tasks = tasks.clone();
    operation::write(ctx, r, &status).await?;
    for t in &tasks {
        if let Ok(mut c) = agents.connect(&t.pod).await
            && let Err(e) = c
                .start_restore(request(r, storage, src, t, pb::RestoreStage::Upload))
                .await
        {
            tracing::warn!(restore = %r.name_any(), pod = %t.pod, error = %e.message(), "could not start a task; the next reconcile retries");
        }
    }
    Ok(Action::requeue(Duration::from_secs(1)))
}

async fn complete(
    r: &QdrantRestore,
    ctx: &Context,
    mut status: QdrantRestoreStatus,
) -> Result<Action, Halt> {
    let names: Vec<&str> = status.collections.iter().map(|c| c.name.as_str()).collect();
    let message = format!(
        "restored {} from {}",
        names.join(", "),
        status.s3_path.clone().unwrap_or_default()
    );
    status.stage = Some(RestoreStage::Done);
    Ok(operation::completed(r, ctx, status, message).await?)
}

/// Cancels the running tasks and, once the collections were created by
/// this restore (Upload or Finish stage), deletes them again.
async fn undo(
    r: &QdrantRestore,
    ctx: &Context,
    cluster: Option<&QdrantCluster>,
    status: &QdrantRestoreStatus,
) -> Result<(), String> {
    let cluster = cluster.ok_or("its cluster is gone")?;
    let agents = Agents::of(&ctx.client, cluster, &ctx.tls.get())
        .await
        .map_err(Halt::text)?;
    agents.cancel_running(&status.tasks).await;
    if !matches!(
        status.stage,
        Some(RestoreStage::Upload | RestoreStage::Finish)
    ) {
        return Ok(());
    }
    let src = source(r, ctx).await.map_err(Halt::text)?;
    let ns = r.namespace().unwrap_or_default();
    let storage = storage_target(&ctx.client, &ns, &src.storage, &src.prefix)
        .await
        .map_err(Halt::text)?;
    let pod = agents
        .pods
        .first()
        .ok_or("the target cluster has no ready pod")?
        .name
        .clone();
    let sources = sources(&status.tasks);
    let rollback = pb::RestoreStage::Rollback;
    let task = whole_collections_task(r, rollback, &pod, String::new(), &sources);
    let req = request(r, &storage, &src, &task, rollback);
    let mut c = agents.connect(&pod).await?;
    c.start_restore(req)
        .await
        .map_err(|s| status_reason(&s).1)?;
    let mut s = c
        .watch_task(pb::TaskRef {
            task_id: task.task_id,
        })
        .await
        .map_err(|s| status_reason(&s).1)?
        .into_inner();
    let last = tokio::time::timeout(Duration::from_secs(60), async {
        let mut last = None;
        while let Some(Ok(t)) = s.next().await {
            last = Some(t);
        }
        last
    })
    .await
    .ok()
    .flatten();
    match last {
        Some(t) if t.phase() == TaskPhase::Succeeded => Ok(()),
        Some(t) => Err(t.error),
        None => Err("the rollback did not finish within 60s".into()),
    }
}

async fn fail(
    r: &QdrantRestore,
    ctx: &Context,
    cluster: Option<&QdrantCluster>,
    reason: &str,
    message: String,
) -> Result<Action, Error> {
    let previous = status_of(r);
    let mut message = message;
    if previous.stage.is_some() {
        match undo(r, ctx, cluster, &previous).await {
            Ok(())
                if matches!(
                    previous.stage,
                    Some(RestoreStage::Upload | RestoreStage::Finish)
                ) =>
            {
                message = format!("{message}; the collections it created were deleted again");
            }
            Ok(()) => {}
            Err(e) => {
                message = format!("{message}; the collections it created could not be deleted: {e}")
            }
        }
    }
    operation::failed(r, ctx, reason, message).await
}

/// Deleting a running restore cancels its tasks and removes the
/// collections it created; a finished restore leaves its collections.
async fn cleanup(r: &QdrantRestore, ctx: &Context) -> Result<Action, Error> {
    let status = status_of(r);
    if status.phase != Some(OperationPhase::InProgress) {
        return Ok(Action::await_change());
    }
    let ns = r.namespace().unwrap_or_default();
    let clusters: Api<QdrantCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let cluster = clusters.get_opt(&r.spec.target_cluster_ref.name).await?;
    if let Err(e) = undo(r, ctx, cluster.as_ref(), &status).await {
        report::event(
            &ctx.recorder,
            &r.object_ref(&()),
            EventType::Warning,
            "RollbackFailed",
            "Delete",
            format!("the restore was deleted while running; its collections may remain: {e}"),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// Runs the QdrantRestore controller until shutdown.
pub async fn run(ctx: Arc<Context>) {
    let controller = runtime::controller::<QdrantRestore>(&ctx.client);
    runtime::run(controller, ctx.clone(), reconcile).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_path_splits_into_prefix_and_backup_and_refuses_escapes() {
        assert_eq!(
            split_path("backups/search/vectors/nightly-1"),
            Ok(("backups/search/vectors".into(), "nightly-1".into()))
        );
        assert_eq!(split_path("/only/"), Ok(("".into(), "only".into())));
        for bad in ["", "/", "a//b", "a/../b", "a/./b", "a/b\n"] {
            assert!(split_path(bad).is_err(), "{bad:?}");
        }
    }
}
