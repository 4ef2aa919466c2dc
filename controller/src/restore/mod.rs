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

mod rollback;
use rollback::*;

pub mod decide;

use crate::agents::{Agents, Start, agent_pods, instances, status_reason, storage_target};
use crate::crd::{
    AgentTask, OperationPhase, QdrantBackup, QdrantRestore, QdrantRestoreStatus, RestoreStage,
};
use crate::operation::Step;
use crate::plan::{from_agent, plan};
use crate::runtime::Wait;
use crate::runtime::operation::{self, Settled};
use crate::runtime::{self, Context, Error, Halt, report};
use crate::target::Target;
use crate::tasks::{self, Outcome};
use decide::{
    ManifestView, Source, proto_stage, request, selection, sources, target_name, task_id,
    whole_collections_task,
};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use qdrant_agent_proto::v1::{
    self as pb, GetPlacementRequest, ReadManifestRequest, StorageTarget, TaskPhase,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub const FINALIZER: &str = "qdrant.io/restore";

pub async fn reconcile(r: Arc<QdrantRestore>, ctx: Arc<Context>) -> Result<Action, Error> {
    runtime::finalized(
        r,
        ctx,
        FINALIZER,
        needs_finalizer,
        async |o: Arc<QdrantRestore>, ctx: &Context| apply(&o, ctx).await,
        async |o: Arc<QdrantRestore>, ctx: &Context| cleanup(&o, ctx).await,
    )
    .await
}

/// The finalizer protects a running restore (deleting it cancels its tasks
/// and removes what it created); a waiting or finished one holds none.
pub fn needs_finalizer(r: &QdrantRestore) -> bool {
    r.status.as_ref().and_then(|s| s.phase) == Some(OperationPhase::InProgress)
}

fn status_of(r: &QdrantRestore) -> QdrantRestoreStatus {
    r.status.clone().unwrap_or_default()
}

async fn target(r: &QdrantRestore, ctx: &Context) -> Result<Option<Target>, kube::Error> {
    let ns = r.namespace().unwrap_or_default();
    Target::get(&ctx.client, &ns, &r.spec.target_cluster_ref).await
}

/// Where the restore reads from: its spec's S3 path, or its QdrantBackup.
async fn source(r: &QdrantRestore, ctx: &Context) -> Result<Source, Halt> {
    let backup = match &r.spec.backup_ref {
        Some(b) if r.spec.source.is_none() => {
            let ns = r.namespace().unwrap_or_default();
            Api::<QdrantBackup>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&b.name)
                .await?
        }
        _ => None,
    };
    decide::source(r, backup.as_ref())
}

async fn apply(r: &QdrantRestore, ctx: &Context) -> Result<Action, Error> {
    let cluster = target(r, ctx).await?;
    if status_of(r).stage == Some(RestoreStage::RollingBack) {
        return roll_back(r, ctx, cluster.as_ref()).await;
    }
    let others = if status_of(r).stage.is_none() {
        let ns = r.namespace().unwrap_or_default();
        Api::<QdrantRestore>::namespaced(ctx.client.clone(), &ns)
            .list(&Default::default())
            .await?
            .items
    } else {
        vec![]
    };
    let outcome = match decide::next_step(r, cluster.as_ref(), &others) {
        Step::Done | Step::Expire => return Ok(Action::await_change()),
        Step::Wait { reason, message } => Err(Halt::wait(reason, message)),
        Step::Fail { reason, message } => Err(Halt::fail(reason, message)),
        Step::Run => drive(r, ctx, cluster.as_ref().expect("Run has a cluster")).await,
    };
    match operation::settle(r, ctx, outcome).await? {
        Settled::Action(a) => Ok(a),
        Settled::Fail { reason, message } => fail(r, ctx, cluster.as_ref(), &reason, message).await,
    }
}

async fn drive(r: &QdrantRestore, ctx: &Context, cluster: &Target) -> Result<Action, Halt> {
    let status = status_of(r);
    let started = status.stage.is_some();
    let src = source(r, ctx).await.map_err(|h| h.once(started))?;
    if !started {
        crate::agents::storage_allowed(&src.storage, &ctx.storage_policy)
            .map_err(|(reason, message)| Halt::fail(reason, message))?;
    }
    let ns = r.namespace().unwrap_or_default();
    let storage = storage_target(&ctx.client, &ns, &src.storage, &src.prefix)
        .await
        .map_err(|h| h.once(started))?;
    let agents = Agents::of(&ctx.client, cluster, &ctx.tls.get())
        .await
        .map_err(|h| h.once(started))?;
    match status.stage {
        None => start(r, ctx, &agents, &storage, &src).await,
        Some(stage) => follow(r, ctx, &agents, &storage, &src, stage).await,
    }
}

/// Reads the manifest through one agent, checks what is asked against it,
/// and starts the first stage.
async fn start(
    r: &QdrantRestore,
    ctx: &Context,
    agents: &Agents,
    storage: &StorageTarget,
    src: &Source,
) -> Result<Action, Halt> {
    agents.every_pod_has_one()?;
    let cluster = &r.spec.target_cluster_ref.name;
    let (seen, unreachable) = agents.survey_some(&[], cluster).await?;
    if seen.len() < agents.pods.len() {
        // Every pod takes part: wait until every agent answers.
        return Err(Halt::wait(Wait::AgentUnreachable, unreachable.join("; ")));
    }
    let first = &seen[0];
    let mut c = agents
        .connect(&first.pod)
        .await
        .map_err(|m| Halt::wait(Wait::AgentUnreachable, m))?;
    let manifest = c
        .read_manifest(ReadManifestRequest {
            storage: Some(storage.clone()),
            backup_name: src.name.clone(),
            collections_only: true,
        })
        .await
        .map_err(|s| {
            let (reason, message) = status_reason(&s);
            // The store or the agent may be back soon; anything else is final.
            if s.code() == tonic::Code::Unavailable {
                Halt::wait(Wait::StorageUnavailable, message)
            } else {
                Halt::fail(reason, message)
            }
        })?
        .into_inner();
    let manifest: ManifestView = serde_json::from_str(&manifest.manifest_json)
        .map_err(|e| Halt::fail("ManifestInvalid", format!("{}: {e}", src.s3_path())))?;
    let wanted = selection(r, &manifest, seen.len(), src)?;
    let stage = decide::first_stage(seen.len());
    let task = whole_collections_task(r, stage, &first.pod, first.instance_id.clone(), &wanted);
    let message = format!(
        "restoring {} collections from {} into {} pods",
        wanted.len(),
        src.s3_path(),
        seen.len()
    );
    // From here on, deleting the resource must stop the tasks and remove
    // what they created.
    runtime::hold(r, ctx, FINALIZER).await?;
    let now = (ctx.now)();
    let status = QdrantRestoreStatus {
        phase: Some(OperationPhase::InProgress),
        start_time: Some(Time(now)),
        stage: Some(stage),
        s3_path: Some(src.s3_path()),
        tasks: vec![task],
        conditions: vec![report::ready(
            false,
            "Verifying",
            message.clone(),
            now,
            &status_of(r).conditions,
            r.metadata.generation,
        )],
        observed_generation: r.metadata.generation,
        ..Default::default()
    };
    operation::announce(r, ctx, &status, EventType::Normal, "Started", message).await?;
    start_tasks(r, agents, storage, src, &status.tasks, proto_stage(stage)).await;
    Ok(Action::requeue(Duration::from_secs(1)))
}

async fn start_tasks(
    r: &QdrantRestore,
    agents: &Agents,
    storage: &StorageTarget,
    src: &Source,
    tasks: &[AgentTask],
    stage: pb::RestoreStage,
) {
    let starts = tasks
        .iter()
        .map(|t| (t, Start::Restore(request(r, storage, src, t, stage))))
        .collect();
    agents.start_each(starts).await
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
        let start = Start::Restore(request(r, storage, src, t, pstage));
        agents.observe(t, ctx.follow_window, start)
    }))
    .await;
    // What the agents created, as they report it: what a rollback deletes.
    for t in &seen {
        if let tasks::Observed::Task(t) = t {
            for c in &t.created_collections {
                if !status.created_collections.contains(c) {
                    status.created_collections.push(c.clone());
                }
            }
        }
    }
    let outcome = tasks::fold(&mut status.tasks, seen.into_iter().enumerate().collect());
    let uploads = matches!(stage, RestoreStage::Upload | RestoreStage::All);
    let finished = match outcome {
        // A restore is not re-planned: its collections are rolled back and
        // it fails, saying which agent went away.
        Outcome::Lost(why) => return Err(Halt::fail("AgentLost", why.join("; "))),
        Outcome::Failed { reason, message } => return Err(Halt::fail(reason, message)),
        Outcome::Running => {
            if uploads {
                let total = status.progress.as_ref().map_or(0, |p| p.shards_total);
                status.progress = Some(tasks::progress(&status.tasks, total));
            }
            operation::write(ctx, r, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        Outcome::AllSucceeded(finished) => finished,
    };
    if uploads {
        let reported = finished.iter().map(|t| t.shards_total).sum();
        let total = status.progress.as_ref().map_or(0, |p| p.shards_total);
        status.progress = Some(tasks::progress(&status.tasks, total.max(reported)));
        status.collections = tasks::results(&status.tasks, &finished);
    }
    match stage {
        RestoreStage::Verify => upload_stage(r, ctx, agents, storage, src, status).await,
        RestoreStage::Upload => finish_stage(r, ctx, agents, storage, src, status).await,
        _ => complete(r, ctx, status).await,
    }
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
    let cluster = &r.spec.target_cluster_ref.name;
    let (seen, _) = agents
        .survey_some(&targets, cluster)
        .await
        .map_err(Halt::into_fail)?;
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
    // Planned under the target names; the tasks name the backup's.
    let back: HashMap<String, String> = sources
        .iter()
        .map(|s| (target_name(r, s).to_string(), s.clone()))
        .collect();
    let planned = planned
        .into_iter()
        .map(|(pod, shards)| {
            let shards = shards
                .into_iter()
                .map(|(c, shard)| (back.get(&c).cloned().unwrap_or(c), shard));
            (pod, shards.collect())
        })
        .collect();
    let tasks = tasks::from_plan(
        planned,
        &instances(&seen),
        |pod| task_id(r, RestoreStage::Upload, pod),
        1,
    );
    let total = tasks.iter().map(|t| t.shards.len() as u32).sum();
    status.progress = Some(tasks::progress(&tasks, total));
    let message = format!("uploading {total} shards from {} pods", tasks.len());
    let next = Stage::new(RestoreStage::Upload, "Uploading", message, tasks);
    enter(r, ctx, agents, storage, src, status, next).await
}

/// The next stage of a restore: its tasks and what its condition says.
struct Stage {
    stage: RestoreStage,
    reason: &'static str,
    message: String,
    tasks: Vec<AgentTask>,
}

impl Stage {
    fn new(
        stage: RestoreStage,
        reason: &'static str,
        message: String,
        tasks: Vec<AgentTask>,
    ) -> Self {
        Self {
            stage,
            reason,
            message,
            tasks,
        }
    }
}

/// Writes the stage and its tasks to status, then starts the tasks.
async fn enter(
    r: &QdrantRestore,
    ctx: &Context,
    agents: &Agents,
    storage: &StorageTarget,
    src: &Source,
    mut status: QdrantRestoreStatus,
    next: Stage,
) -> Result<Action, Halt> {
    status.stage = Some(next.stage);
    status.conditions = vec![report::ready(
        false,
        next.reason,
        next.message,
        (ctx.now)(),
        &status.conditions,
        r.metadata.generation,
    )];
    status.tasks = next.tasks;
    operation::write(ctx, r, &status).await?;
    let stage = proto_stage(next.stage);
    start_tasks(r, agents, storage, src, &status.tasks, stage).await;
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// Uploads done: one agent re-creates the aliases and waits for green.
async fn finish_stage(
    r: &QdrantRestore,
    ctx: &Context,
    agents: &Agents,
    storage: &StorageTarget,
    src: &Source,
    status: QdrantRestoreStatus,
) -> Result<Action, Halt> {
    let cluster = &r.spec.target_cluster_ref.name;
    let (seen, _) = agents
        .survey_some(&[], cluster)
        .await
        .map_err(Halt::into_fail)?;
    let first = &seen[0];
    let task = whole_collections_task(
        r,
        RestoreStage::Finish,
        &first.pod,
        first.instance_id.clone(),
        &sources(&status.tasks),
    );
    let message =
        "re-creating aliases; waiting until every replica is Active and each collection is green";
    let next = Stage::new(
        RestoreStage::Finish,
        "Finishing",
        message.into(),
        vec![task],
    );
    enter(r, ctx, agents, storage, src, status, next).await
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

/// Deleting a running restore cancels its tasks and removes the
/// collections it created; a finished restore leaves its collections.
async fn cleanup(r: &QdrantRestore, ctx: &Context) -> Result<Action, Error> {
    let status = status_of(r);
    if status.phase != Some(OperationPhase::InProgress) {
        return Ok(Action::await_change());
    }
    let cluster = target(r, ctx).await?;
    if let Err(e) = undo(r, ctx, cluster.as_ref(), &status).await {
        report::event(
            &ctx.recorder,
            &r.object_ref(&()),
            EventType::Warning,
            "RollbackFailed",
            "Delete",
            format!(
                "the restore was deleted while running; collections it created (of {}) may remain: {e}",
                decide::rollback_targets(r, &status).join(", ")
            ),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// Runs the QdrantRestore controller until shutdown.
pub async fn run(ctx: Arc<Context>) {
    let controller = runtime::controller::<QdrantRestore>(&ctx.client);
    let _ = ctx.state.restores.set(controller.store());
    let controller = crate::wake::woken(controller, &ctx.client);
    runtime::run(controller, ctx.clone(), reconcile).await;
}
