//! The QdrantBackup reconciler. Each reconcile decides the next step
//! (`decide`), and while the backup runs it follows the agents'
//! tasks for a short window (`WatchTask`), then writes progress: status is
//! written at most once per window, never per part.
//!
//! Start: every ready pod's agent reports its Qdrant peer and the shard
//! placement; `plan` picks one Active replica per shard; the plan
//! goes to status first, then each pod's agent gets its `StartBackup` with
//! a task id derived from the backup's UID, so a restarted controller
//! attaches to the running tasks instead of starting again.
//!
//! A task whose agent restarted (another instance id) or went away is lost:
//! its shards are planned again on the replicas left, up to
//! [`MAX_ATTEMPTS`]. When every task succeeded, an agent writes
//! `manifest.json` last (`WriteManifest`); a failure cancels the tasks and
//! deletes what was uploaded. Snapshot bytes never pass through here.

mod cleanup;
pub mod decide;
mod verify;
use cleanup::*;
use verify::*;

use crate::agents::{Agents, Seen, Start, agent_pods, instances, status_reason, storage_target};
use crate::crd::Verification;
use crate::crd::{
    AgentTask, AgentTaskState, BackupMode, DeletionPolicy, OperationPhase, QdrantBackup,
    QdrantBackupStatus, TaskProgress, TaskShard,
};
use crate::plan::{self, from_agent};
use crate::runtime::Wait;
use crate::runtime::operation::{self, Settled};
use crate::runtime::{self, Context, Error, Halt, report};
use crate::target::Target;
use crate::tasks::{self, Observed, Outcome};
use crate::wake;
use decide::{Step, next_step};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use qdrant_agent_proto::v1::TaskPhase;
use qdrant_agent_proto::v1::{
    self as pb, CollectionSelection, DeleteBackupRequest, StartBackupRequest, StorageTarget,
    TaskRef, WriteManifestRequest,
};
use std::sync::Arc;
use std::time::Duration;

pub const FINALIZER: &str = "qdrant.io/backup";
/// Tries per shard: the first plus re-plans after a lost task.
pub const MAX_ATTEMPTS: u32 = 3;

pub async fn reconcile(b: Arc<QdrantBackup>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile_in(b, ctx, None).await
}

/// A reconcile that reads the namespace's other backups from `store` (the
/// controller's cache) when given, else from the API server.
async fn reconcile_in(
    b: Arc<QdrantBackup>,
    ctx: Arc<Context>,
    store: Option<Store<QdrantBackup>>,
) -> Result<Action, Error> {
    runtime::finalized(
        b,
        ctx,
        FINALIZER,
        needs_finalizer,
        async |o: Arc<QdrantBackup>, ctx: &Context| apply(&o, ctx, store).await,
        async |o: Arc<QdrantBackup>, ctx: &Context| cleanup(&o, ctx).await,
    )
    .await
}

/// The finalizer protects a running backup (its tasks are cancelled and its
/// partial objects deleted with it) and a Completed one whose objects go
/// with the resource (deletionPolicy Delete); nothing else holds one.
pub fn needs_finalizer(b: &QdrantBackup) -> bool {
    match b.status.as_ref().and_then(|s| s.phase) {
        Some(OperationPhase::InProgress) => true,
        Some(OperationPhase::Completed) => b.spec.deletion_policy == DeletionPolicy::Delete,
        _ => false,
    }
}

fn status_of(b: &QdrantBackup) -> QdrantBackupStatus {
    b.status.clone().unwrap_or_default()
}

/// The storage target of the backup's objects, at its pinned location.
async fn storage_of(b: &QdrantBackup, ctx: &Context) -> Result<StorageTarget, Halt> {
    let (s3, prefix) = b.storage_at_location();
    storage_target(
        &ctx.client,
        &b.namespace().unwrap_or_default(),
        &s3,
        &prefix,
    )
    .await
}

/// The other backups of `b`'s namespace, which decide whether it may start.
/// Shared, not copied: thousands of backups may wait at once.
async fn others(
    b: &QdrantBackup,
    ctx: &Context,
    store: Option<Store<QdrantBackup>>,
) -> Result<Vec<Arc<QdrantBackup>>, Error> {
    let ns = b.namespace();
    match store {
        // Read from the cache once it holds the whole first list: a
        // partial one could miss the backup that runs.
        Some(store) if store.wait_until_ready().await.is_ok() => {
            let mut all = store.state();
            all.retain(|o| o.namespace() == ns);
            Ok(all)
        }
        _ => {
            let api: Api<QdrantBackup> =
                Api::namespaced(ctx.client.clone(), &ns.unwrap_or_default());
            let list = api.list(&ListParams::default()).await?.items;
            Ok(list.into_iter().map(Arc::new).collect())
        }
    }
}

async fn apply(
    b: &QdrantBackup,
    ctx: &Context,
    store: Option<Store<QdrantBackup>>,
) -> Result<Action, Error> {
    let ns = b.namespace().unwrap_or_default();
    let backups: Api<QdrantBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let status = status_of(b);
    if matches!(status.phase, None | Some(OperationPhase::Pending))
        && let Err((reason, message)) =
            crate::agents::storage_allowed(&b.spec.storage.s3, &ctx.storage_policy)
    {
        return operation::failed(b, ctx, reason, message).await;
    }
    let cluster = Target::get(&ctx.client, &ns, &b.spec.cluster_ref).await?;
    let others = match status.phase {
        None | Some(OperationPhase::Pending) => others(b, ctx, store).await?,
        _ => vec![],
    };
    let now = (ctx.now)();
    match next_step(b, cluster.as_ref(), &others, now) {
        Step::Done => Ok(match (b.spec.retention_days, &status.completion_time) {
            (Some(days), Some(done)) => {
                let at = done.0 + jiff::SignedDuration::from_hours(24 * i64::from(days));
                let wait = at.duration_since(now).as_secs().clamp(1, 86400);
                Action::requeue(Duration::from_secs(wait as u64))
            }
            _ => Action::await_change(),
        }),
        Step::Expire => {
            report::event(
                &ctx.recorder,
                &b.object_ref(&()),
                EventType::Normal,
                "Expired",
                "Expire",
                format!(
                    "retentionDays ({}) passed; deleting the backup (deletionPolicy {:?})",
                    b.spec.retention_days.unwrap_or_default(),
                    b.spec.deletion_policy
                ),
            )
            .await;
            backups
                .delete(&b.name_any(), &DeleteParams::default())
                .await?;
            Ok(Action::await_change())
        }
        Step::Wait { reason, message } => {
            operation::wait(b, ctx, reason, message).await?;
            // Watches wake it when the cluster or the backup ahead changes.
            Ok(Action::requeue(operation::WATCHED_WAIT))
        }
        Step::Fail { reason, message } => fail(b, ctx, cluster.as_ref(), reason, message).await,
        Step::Run => {
            let cluster = cluster.expect("next_step runs only with a cluster");
            let outcome = drive(b, ctx, &cluster).await;
            match operation::settle(b, ctx, outcome).await? {
                Settled::Action(a) => Ok(a),
                Settled::Fail { reason, message } => {
                    fail(b, ctx, Some(&cluster), &reason, message).await
                }
            }
        }
    }
}

/// A wait stays a wait once the backup runs too (a Secret, a token or an
/// agent gone for a moment): its tasks run on, and it fails only on a
/// definitive error or its deadline.
async fn drive(b: &QdrantBackup, ctx: &Context, cluster: &Target) -> Result<Action, Halt> {
    let started = !status_of(b).tasks.is_empty();
    let storage = storage_of(b, ctx).await?;
    let agents = Agents::of(&ctx.client, cluster, &ctx.tls.get()).await?;
    if started {
        follow(b, ctx, &agents, &storage).await
    } else {
        start(b, ctx, &agents, &storage).await
    }
}

/// Asks the agents where every shard is, plans one replica per shard, and
/// starts the pods' tasks. `shards` limits the plan (a re-plan after a lost
/// task); empty means every shard of the requested collections.
async fn survey_and_plan(
    b: &QdrantBackup,
    agents: &Agents,
    shards: &[TaskShard],
    attempt: u32,
) -> Result<(Vec<AgentTask>, Vec<Seen>), Halt> {
    let (seen, unreachable) = agents
        .survey_some(&b.spec.collections, &b.spec.cluster_ref.name)
        .await?;
    let mut placements = from_agent(&seen[0].placement);
    if !shards.is_empty() {
        placements.retain(|p| {
            shards
                .iter()
                .any(|s| s.collection == p.collection && s.shard_id == p.shard_id)
        });
    }
    if placements.is_empty() {
        return Err(Halt::fail(
            "NothingToBackUp",
            format!(
                "cluster {} has no collections to back up",
                b.spec.cluster_ref.name
            ),
        ));
    }
    let planned =
        plan::plan(&placements, &agent_pods(&seen), &Default::default()).map_err(|e| {
            let why = if unreachable.is_empty() {
                String::new()
            } else {
                format!(" (out of reach: {})", unreachable.join("; "))
            };
            Halt::fail(e.reason(), format!("{e}{why}"))
        })?;
    let uid = b.uid().unwrap_or_default();
    let tasks = tasks::from_plan(
        planned,
        &instances(&seen),
        |pod| plan::task_id(&uid, pod, attempt),
        attempt,
    );
    Ok((tasks, seen))
}

async fn start(
    b: &QdrantBackup,
    ctx: &Context,
    agents: &Agents,
    storage: &StorageTarget,
) -> Result<Action, Halt> {
    agents.every_pod_has_one()?;
    let (tasks, seen) = survey_and_plan(b, agents, &[], 1).await?;
    // From here on, deleting the resource must cancel the tasks first.
    runtime::hold(b, ctx, FINALIZER).await?;
    let previous = status_of(b);
    let total: usize = tasks.iter().map(|t| t.shards.len()).sum();
    let collections: std::collections::BTreeSet<&str> = tasks
        .iter()
        .flat_map(|t| t.shards.iter().map(|s| s.collection.as_str()))
        .collect();
    let message = format!(
        "backing up {total} shards of {} collections from {} pods",
        collections.len(),
        tasks.len()
    );
    let now = (ctx.now)();
    let status = QdrantBackupStatus {
        phase: Some(OperationPhase::InProgress),
        start_time: Some(Time(now)),
        progress: Some(TaskProgress {
            bytes_done: 0,
            shards_done: 0,
            shards_total: total as u32,
        }),
        s3_path: Some(b.s3_path()),
        location: Some(b.location()),
        qdrant_version: Some(seen[0].qdrant_version.clone()),
        tasks,
        conditions: vec![report::ready(
            false,
            "InProgress",
            message.clone(),
            now,
            &previous.conditions,
            b.metadata.generation,
        )],
        observed_generation: b.metadata.generation,
        ..Default::default()
    };
    // The plan is in status before any task starts: whatever happens next,
    // a reconcile finds the task ids and attaches to them.
    operation::announce(b, ctx, &status, EventType::Normal, "Started", message).await?;
    start_tasks(b, agents, storage, &status.tasks).await;
    Ok(Action::requeue(Duration::from_secs(1)))
}

fn start_request(b: &QdrantBackup, storage: &StorageTarget, t: &AgentTask) -> StartBackupRequest {
    let by_collection = tasks::by_collection(&t.shards);
    StartBackupRequest {
        task_id: t.task_id.clone(),
        storage: Some(storage.clone()),
        backup_name: b.name_any(),
        collections: by_collection
            .into_iter()
            .map(|(c, shard_ids)| CollectionSelection {
                collection: c.to_string(),
                shard_ids,
            })
            .collect(),
        mode: match b.spec.mode {
            BackupMode::Stream => pb::BackupMode::Stream,
            BackupMode::File => pb::BackupMode::File,
            BackupMode::ShardFile => pb::BackupMode::ShardFile,
            BackupMode::Auto => pb::BackupMode::Auto,
        } as i32,
        skip_manifest: true,
        owner: b.uid().unwrap_or_default(),
        ..Default::default()
    }
}

async fn start_tasks(
    b: &QdrantBackup,
    agents: &Agents,
    storage: &StorageTarget,
    tasks: &[AgentTask],
) {
    let starts = tasks
        .iter()
        .map(|t| (t, Start::Backup(start_request(b, storage, t))))
        .collect();
    agents.start_each(starts).await
}

async fn follow(
    b: &QdrantBackup,
    ctx: &Context,
    agents: &Agents,
    storage: &StorageTarget,
) -> Result<Action, Halt> {
    let mut status = status_of(b);
    if status.verification.is_some() {
        return follow_verify(b, ctx, agents, storage, status).await;
    }
    let live = tasks::live(&status.tasks);
    let seen = futures::future::join_all(live.iter().map(|&i| {
        let t = &status.tasks[i];
        let start = Start::Backup(start_request(b, storage, t));
        agents.observe(t, ctx.follow_window, start)
    }))
    .await;
    let outcome = tasks::fold(&mut status.tasks, live.into_iter().zip(seen).collect());
    let total = status.progress.as_ref().map_or(0, |p| p.shards_total);
    status.progress = Some(tasks::progress(&status.tasks, total));
    match outcome {
        Outcome::Failed { reason, message } => Err(Halt::fail(reason, message)),
        Outcome::Lost(why) => replan(b, ctx, agents, storage, status, why).await,
        Outcome::AllSucceeded(finished) => {
            complete(b, ctx, agents, storage, status, finished).await
        }
        Outcome::Running => {
            operation::write(ctx, b, &status).await?;
            Ok(Action::requeue(Duration::from_secs(1)))
        }
    }
}

/// Hands the shards of lost tasks to new tasks, on the replicas whose
/// agents answer, as the next attempt.
async fn replan(
    b: &QdrantBackup,
    ctx: &Context,
    agents: &Agents,
    storage: &StorageTarget,
    mut status: QdrantBackupStatus,
    why: Vec<String>,
) -> Result<Action, Halt> {
    let attempt = status.tasks.iter().map(|t| t.attempt).max().unwrap_or(1) + 1;
    let why = why.join("; ");
    if attempt > MAX_ATTEMPTS {
        return Err(Halt::fail(
            "AgentLost",
            format!("tasks were lost {MAX_ATTEMPTS} times; last: {why}"),
        ));
    }
    // Lost tasks' shards not yet covered by a live task.
    let covered: Vec<&TaskShard> = status
        .tasks
        .iter()
        .filter(|t| t.state != AgentTaskState::Lost)
        .flat_map(|t| &t.shards)
        .collect();
    let shards: Vec<TaskShard> = status
        .tasks
        .iter()
        .filter(|t| t.state == AgentTaskState::Lost)
        .flat_map(|t| t.shards.clone())
        .filter(|s| !covered.contains(&s))
        .collect();
    // A lost task may still be running where the agent is reachable again
    // (a network hiccup): cancel it, so only the new task writes.
    for t in status
        .tasks
        .iter()
        .filter(|t| t.state == AgentTaskState::Lost)
    {
        if let Ok(mut c) = agents.connect(&t.pod).await {
            let _ = c
                .cancel_task(TaskRef {
                    task_id: t.task_id.clone(),
                })
                .await;
        }
    }
    let (new, _) = survey_and_plan(b, agents, &shards, attempt)
        .await
        .map_err(|h| match h.into_fail() {
            Halt::Fail { reason, message } => {
                Halt::fail(reason, format!("{message}; after: {why}"))
            }
            other => other,
        })?;
    let message = format!(
        "{why}; {} shards handed to attempt {attempt} on {}",
        shards.len(),
        new.iter()
            .map(|t| t.pod.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    status.tasks.extend(new.clone());
    operation::announce(b, ctx, &status, EventType::Warning, "TaskLost", message).await?;
    start_tasks(b, agents, storage, &new).await;
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// Every task succeeded: an agent checks each object and writes the
/// manifest, last; then the backup is Completed.
async fn complete(
    b: &QdrantBackup,
    ctx: &Context,
    agents: &Agents,
    storage: &StorageTarget,
    mut status: QdrantBackupStatus,
    parts: Vec<pb::Task>,
) -> Result<Action, Halt> {
    // The resource may have been deleted while this reconcile followed the
    // tasks: then it is discarded by the finalizer, never committed.
    let api: Api<QdrantBackup> =
        Api::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default());
    let latest = api.get_opt(&b.name_any()).await?;
    if latest.is_none_or(|l| l.metadata.deletion_timestamp.is_some()) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let started_at = status
        .start_time
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    // The topology and placement as they are now go into the manifest.
    let names: std::collections::BTreeSet<String> = parts
        .iter()
        .flat_map(|p| p.collections.iter().map(|c| c.name.clone()))
        .collect();
    let names: Vec<String> = names.into_iter().collect();
    let (seen, _) = agents.survey_some(&names, &b.spec.cluster_ref.name).await?;
    let mut c = agents.any().await?;
    let written = c
        .write_manifest(crate::agent_client::long_call(WriteManifestRequest {
            storage: Some(storage.clone()),
            backup_name: b.name_any(),
            parts: parts.clone(),
            started_at,
            placement: seen
                .first()
                .map(|s| s.placement.collections.clone())
                .unwrap_or_default(),
            nodes: seen
                .iter()
                .map(|s| pb::ClusterNode {
                    name: s.pod.clone(),
                    peer_id: s.placement.peer_id,
                })
                .collect(),
            owner: b.uid().unwrap_or_default(),
        }))
        .await
        .map_err(|s| {
            let (reason, message) = status_reason(&s);
            let message = format!("writing the manifest: {message}");
            if transient(&s, &reason) {
                // Every object is uploaded: retry the commit, never discard.
                Halt::wait(Wait::CommitRetrying, message)
            } else {
                Halt::fail(reason, message)
            }
        })?
        .into_inner();
    status.size_bytes = Some(written.total_bytes);
    status.collections = tasks::results(&status.tasks, &parts);
    if let Some(p) = &mut status.progress {
        p.shards_done = p.shards_total;
    }
    if b.spec.verify {
        return start_verify(b, ctx, agents, storage, status, 1).await;
    }
    let message = summary(b, &status);
    Ok(operation::completed(b, ctx, status, message).await?)
}

/// "N objects, B bytes, in s3://...": what a Completed backup holds.
fn summary(b: &QdrantBackup, status: &QdrantBackupStatus) -> String {
    let objects: u32 = status.collections.iter().map(|c| c.objects).sum();
    format!(
        "{objects} objects, {} bytes, in {}",
        status.size_bytes.unwrap_or(0),
        b.s3_path()
    )
}

/// Whether a failed call may succeed if tried again: the agent or the store
/// was out of reach or busy.
fn transient(s: &tonic::Status, reason: &str) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
    ) || matches!(reason, "S3Unavailable" | "S3Unreachable")
}

/// Ends the backup as Failed: cancels its running tasks and deletes what
/// they uploaded, so nothing half-written remains or passes for complete.
async fn fail(
    b: &QdrantBackup,
    ctx: &Context,
    cluster: Option<&Target>,
    reason: &str,
    message: String,
) -> Result<Action, Error> {
    // This reconcile may have written status since `b` was read (a failed
    // verification does): fail from the latest, or that write is undone.
    let api: Api<QdrantBackup> =
        Api::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default());
    let latest = api.get_opt(&b.name_any()).await.ok().flatten();
    let b = latest.as_ref().unwrap_or(b);
    let previous = status_of(b);
    let mut message = message;
    // A name that is taken was refused before anything was written: what
    // is there belongs to someone else and stays.
    if !previous.tasks.is_empty() && reason != "BackupExists" {
        match discard(b, ctx, cluster, &previous).await {
            Ok(Discarded::Deleted(_)) => {}
            Ok(Discarded::NotOwned(why)) => {
                message = format!("{message}; nothing was deleted: {why}");
            }
            Err(e) => {
                let left = left_behind(b);
                message =
                    format!("{message}; its partial objects could not be deleted ({e}): {left}");
                report::event(
                    &ctx.recorder,
                    &b.object_ref(&()),
                    EventType::Warning,
                    "ObjectsLeft",
                    "Fail",
                    left,
                )
                .await;
            }
        }
    }
    operation::failed(b, ctx, reason, message).await
}

/// Runs the QdrantBackup controller until shutdown.
pub async fn run(ctx: Arc<Context>) {
    let controller = runtime::controller::<QdrantBackup>(&ctx.client);
    let store = controller.store();
    let _ = ctx.state.backups.set(store.clone());
    let controller = wake::woken(controller, &ctx.client);
    runtime::run(controller, ctx.clone(), move |b, ctx| {
        reconcile_in(b, ctx, Some(store.clone()))
    })
    .await;
}
