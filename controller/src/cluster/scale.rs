//! Scale-in without losing a shard. Qdrant moves nothing by itself: a pod
//! removed with its shard replicas takes them with it, and its peer stays in
//! consensus as dead. So before the StatefulSet shrinks, the agent of a pod
//! that stays runs a drain (`StartDrain`): every replica on the pods that
//! leave moves to, or is dropped in favour of, a pod that stays, one at a
//! time, and their peers leave consensus. Only then does the StatefulSet
//! get its new replica count. What cannot be done is refused before
//! anything moves, and the cluster keeps its pods.

use super::disk::{disk_refusal, disks};
use crate::agents::{Agents, Start};
use crate::crd::{AgentTaskState, QdrantCluster, ScaleIn, ScaleInState};
use crate::runtime::{Context, Error, Halt};
use crate::target::Target;
use crate::tasks::{self, Observed};
use kube::ResourceExt;
use qdrant_agent_proto::v1::{self as pb, TaskPhase};
use std::time::Duration;

/// What this reconcile does about a change of `spec.replicas`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaled {
    /// The StatefulSet's replicas now: the new count, or the current one
    /// while the pods that leave are not empty yet.
    pub replicas: i32,
    pub status: Option<ScaleIn>,
    /// An Event to record: (warning, reason, note).
    pub event: Option<(bool, &'static str, String)>,
}

impl Scaled {
    fn hold(current: i32, status: ScaleIn) -> Self {
        Self {
            replicas: current,
            status: Some(status),
            event: None,
        }
    }

    fn with_event(mut self, warning: bool, reason: &'static str, note: String) -> Self {
        self.event = Some((warning, reason, note));
        self
    }

    /// When to look again while the scale-in goes on: soon while shards
    /// move, later after a failed attempt (it is started again then).
    pub fn requeue(&self) -> Option<Duration> {
        let s = self.status.as_ref()?;
        if s.state == ScaleInState::Refused {
            return Some(REFUSED_RETRY);
        }
        if s.state != ScaleInState::MovingShards {
            return None;
        }
        let failed = s
            .task
            .as_ref()
            .is_some_and(|t| t.state == AgentTaskState::Failed);
        Some(if failed {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(2)
        })
    }
}

/// How long one reconcile follows the drain before it writes progress.
pub(super) const WINDOW: Duration = Duration::from_secs(2);
/// How soon a refused scale-in is tried again.
const REFUSED_RETRY: Duration = Duration::from_secs(60);
/// How soon a failed or lost attempt is started again.
pub(super) const RETRY: Duration = Duration::from_secs(30);

/// When a failed attempt may start again.
pub(super) fn later(ctx: &Context) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time((ctx.now)() + RETRY)
}

/// The pods `[to, from)` of the cluster's StatefulSet: those that leave.
fn leaving_pods(c: &QdrantCluster, from: i32, to: i32) -> Vec<String> {
    (to..from)
        .map(|i| format!("{}-{i}", c.name_any()))
        .collect()
}

/// The drain request a scale-in's task was started with.
fn request(s: &ScaleIn, task_id: &str) -> pb::StartDrainRequest {
    pb::StartDrainRequest {
        task_id: task_id.to_string(),
        leaving_peer_ids: s.leaving_peers.clone(),
        staying_peer_ids: s.staying_peers.clone(),
        // The rebalance after every change of the node count evens out.
        rebalance: false,
    }
}

/// Decides and drives a scale-in from `current` pods to `spec.replicas`.
pub async fn step(c: &QdrantCluster, ctx: &Context, current: i32) -> Result<Scaled, Error> {
    let want = c.spec.replicas;
    let previous = c.status.as_ref().and_then(|s| s.scale_in.clone());
    if want >= current {
        // No scale-in, or one given up: a drain still running stops.
        if let Some(task) = previous
            .filter(|p| p.state == ScaleInState::MovingShards)
            .and_then(|p| p.task)
            && let Ok(agents) =
                Agents::of(&ctx.client, &Target::of_cluster(c), &ctx.tls.get()).await
        {
            agents.cancel_running(&[task]).await;
        }
        return Ok(Scaled {
            replicas: want,
            status: None,
            event: None,
        });
    }
    let fresh = ScaleIn {
        from: current,
        to: want,
        state: ScaleInState::MovingShards,
        task: None,
        leaving_peers: vec![],
        staying_peers: vec![],
        shards_moved: 0,
        shards_to_move: 0,
        message: None,
        generation: c.metadata.generation,
        retry_after: None,
    };
    if !c.spec.agent.enabled {
        let message = format!(
            "scaling in from {current} to {want} pods needs the backup agent, which moves the shards of the pods that leave (spec.agent.enabled is false); enable it, or move the shards yourself and then scale in"
        );
        return Ok(refused(c, current, fresh, previous, message));
    }
    let previous = previous.filter(|p| p.from == current && p.to == want);
    match previous {
        Some(p) if p.state == ScaleInState::Drained => Ok(Scaled {
            replicas: want,
            status: Some(p),
            event: None,
        }),
        Some(p)
            if p.state == ScaleInState::Refused
                && p.generation == c.metadata.generation
                && p.retry_after.as_ref().is_some_and(|t| (ctx.now)() < t.0) =>
        {
            Ok(Scaled::hold(current, p))
        }
        Some(p) if p.state == ScaleInState::Refused => {
            let attempt = p.task.as_ref().map_or(0, |t| t.attempt) + 1;
            let mut again = fresh;
            again.message = p.message.clone();
            start(c, ctx, current, again, attempt).await.map(|mut s| {
                // Said once: the refusal repeats until what stood in its way changed.
                if s.event.as_ref().is_some_and(|e| e.1 == "MovingShards") {
                    s.event = None;
                }
                s
            })
        }
        Some(p) if p.state == ScaleInState::MovingShards => match p.task.clone() {
            // A failed attempt is started again: it plans from where the
            // shards are now.
            Some(t) if t.state == AgentTaskState::Failed => {
                if p.retry_after.as_ref().is_some_and(|r| (ctx.now)() < r.0) {
                    return Ok(Scaled::hold(current, p));
                }
                start(c, ctx, current, p, t.attempt + 1).await
            }
            Some(_) => follow(c, ctx, current, p).await,
            None => start(c, ctx, current, p, 1).await,
        },
        _ => start(c, ctx, current, fresh, 1).await,
    }
}

fn refused(
    c: &QdrantCluster,
    current: i32,
    mut status: ScaleIn,
    previous: Option<ScaleIn>,
    message: String,
) -> Scaled {
    status.state = ScaleInState::Refused;
    status.message = Some(message.clone());
    status.generation = c.metadata.generation;
    let said = previous
        .is_some_and(|p| p.state == ScaleInState::Refused && p.message.as_ref() == Some(&message));
    let s = Scaled::hold(current, status);
    if said {
        s
    } else {
        s.with_event(true, "ScaleInRefused", message)
    }
}

/// A backup or restore of the cluster that runs now, named: shards must not
/// move (or pods restart) under it. New ones wait while shards move, as
/// the cluster is then not Running.
pub async fn operation_running(c: &QdrantCluster, ctx: &Context) -> Result<Option<String>, Error> {
    use crate::crd::{ClusterKind, OperationPhase, QdrantBackup, QdrantRestore};
    let ns = c.namespace().unwrap_or_default();
    let ours = |r: &crate::crd::ClusterReference| {
        r.kind == ClusterKind::QdrantCluster && r.name == c.name_any()
    };
    let running = |p: Option<OperationPhase>| p == Some(OperationPhase::InProgress);
    let backups = kube::Api::<QdrantBackup>::namespaced(ctx.client.clone(), &ns)
        .list(&Default::default())
        .await?;
    if let Some(b) = backups
        .items
        .iter()
        .find(|b| ours(&b.spec.cluster_ref) && running(b.status.as_ref().and_then(|s| s.phase)))
    {
        return Ok(Some(format!("backup {} runs", b.name_any())));
    }
    let restores = kube::Api::<QdrantRestore>::namespaced(ctx.client.clone(), &ns)
        .list(&Default::default())
        .await?;
    Ok(restores
        .items
        .iter()
        .find(|r| {
            ours(&r.spec.target_cluster_ref) && running(r.status.as_ref().and_then(|s| s.phase))
        })
        .map(|r| format!("restore {} runs", r.name_any())))
}

/// The Qdrant peers of pods `0..count`, in order, and the agent that runs
/// a drain or rebalance (pod 0's).
pub(super) struct Peers {
    pub(super) agents: Agents,
    pub(super) ids: Vec<u64>,
    pub(super) runner: String,
    pub(super) instance: String,
}

/// The cluster's agents, what each sees of its Qdrant (all collections),
/// and the pods whose agent did not answer; `Ok(Err(why))` when the agents
/// cannot be asked at all.
pub(super) async fn survey(
    c: &QdrantCluster,
    ctx: &Context,
) -> Result<Result<(Agents, Vec<crate::agents::Seen>, Vec<String>), String>, Error> {
    let agents = match Agents::of(&ctx.client, &Target::of_cluster(c), &ctx.tls.get()).await {
        Ok(a) => a,
        Err(Halt::Kube(e)) => return Err(e.into()),
        Err(h) => return Ok(Err(h.text())),
    };
    Ok(match agents.survey(&[]).await {
        Ok((seen, unreachable)) => Ok((agents, seen, unreachable)),
        Err(h) => Err(h.text()),
    })
}

/// Every pod's Qdrant peer, as its agent tells; `Ok(Err(why))` while an
/// agent does not answer yet.
pub(super) async fn peers(
    c: &QdrantCluster,
    ctx: &Context,
    count: i32,
) -> Result<Result<Peers, String>, Error> {
    let (agents, seen, unreachable) = match survey(c, ctx).await? {
        Ok(s) => s,
        Err(why) => return Ok(Err(why)),
    };
    let name = c.name_any();
    let mut ids = vec![];
    for i in 0..count {
        let pod = format!("{name}-{i}");
        match seen
            .iter()
            .find(|s| s.pod == pod)
            .map(|s| s.placement.peer_id)
        {
            Some(p) if p != 0 => ids.push(p),
            _ => {
                let out_of_reach = if unreachable.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", unreachable.join("; "))
                };
                return Ok(Err(format!(
                    "waiting for the agent of pod {pod} to tell its Qdrant peer before moving shards{out_of_reach}"
                )));
            }
        }
    }
    let runner = format!("{name}-0");
    let instance = seen
        .iter()
        .find(|s| s.pod == runner)
        .map(|s| s.instance_id.clone())
        .unwrap_or_default();
    Ok(Ok(Peers {
        agents,
        ids,
        runner,
        instance,
    }))
}

/// Finds every pod's Qdrant peer and starts the drain on a pod that stays.
async fn start(
    c: &QdrantCluster,
    ctx: &Context,
    current: i32,
    mut status: ScaleIn,
    attempt: u32,
) -> Result<Scaled, Error> {
    if let Some(why) = operation_running(c, ctx).await? {
        status.task = None;
        status.message = Some(format!("waiting to move shards until it ends: {why}"));
        return Ok(Scaled::hold(current, status));
    }
    let found = match peers(c, ctx, current).await? {
        Ok(p) => p,
        Err(why) => {
            status.task = None;
            status.message = Some(why);
            return Ok(Scaled::hold(current, status));
        }
    };
    let (agents, runner, instance) = (found.agents, found.runner, found.instance);
    let pods: Vec<String> = (0..current)
        .map(|i| format!("{}-{i}", c.name_any()))
        .collect();
    let (stay, leave) = pods.split_at((status.to.max(0) as usize).min(pods.len()));
    if let Some(why) = disk_refusal(&disks(&agents, stay).await, &disks(&agents, leave).await) {
        let previous = status.message.clone().map(|m| ScaleIn {
            state: ScaleInState::Refused,
            message: Some(m),
            ..status.clone()
        });
        return Ok(refused(c, current, status, previous, why));
    }
    let (staying, leaving) = found
        .ids
        .split_at((status.to.max(0) as usize).min(found.ids.len()));
    let (staying, leaving) = (staying.to_vec(), leaving.to_vec());
    let task_id = format!(
        "drain-{}-{}-{}-{}-{attempt}",
        c.uid().unwrap_or_default(),
        c.metadata.generation.unwrap_or_default(),
        status.from,
        status.to
    );
    let task = tasks::task(
        runner,
        task_id.clone(),
        instance,
        attempt,
        std::iter::empty(),
    );
    status.leaving_peers = leaving;
    status.staying_peers = staying;
    status.task = Some(task.clone());
    status.message = None;
    agents
        .start_each(vec![(&task, Start::Drain(request(&status, &task_id)))])
        .await;
    let note = format!(
        "moving the shard replicas of {} to the pods that stay before the StatefulSet shrinks from {} to {}",
        leaving_pods(c, status.from, status.to).join(", "),
        status.from,
        status.to
    );
    Ok(Scaled::hold(current, status).with_event(false, "MovingShards", note))
}

/// Follows the drain: progress, then Drained (the StatefulSet shrinks),
/// Refused, or a failure that starts it again.
async fn follow(
    c: &QdrantCluster,
    ctx: &Context,
    current: i32,
    mut status: ScaleIn,
) -> Result<Scaled, Error> {
    let Some(mut task) = status.task.clone() else {
        return start(c, ctx, current, status, 1).await;
    };
    let agents = match Agents::of(&ctx.client, &Target::of_cluster(c), &ctx.tls.get()).await {
        Ok(a) => a,
        Err(Halt::Kube(e)) => return Err(e.into()),
        Err(h) => {
            status.message = Some(h.text());
            return Ok(Scaled::hold(current, status));
        }
    };
    let again = Start::Drain(request(&status, &task.task_id));
    let seen = agents.observe(&task, WINDOW, again).await;
    let t = match seen {
        Observed::Lost(why) => {
            // Started again after a pause (a failed attempt), planning
            // from where the shards are then: never in a tight loop.
            tracing::warn!(cluster = %c.name_any(), why, "scale-in drain lost; starting it again in 30 s");
            task.state = AgentTaskState::Failed;
            status.task = Some(task);
            status.message = Some(why);
            status.retry_after = Some(later(ctx));
            return Ok(Scaled::hold(current, status));
        }
        Observed::Task(t) => t,
    };
    status.shards_moved = t.shards_done;
    status.shards_to_move = t.shards_total;
    task.shards_done = t.shards_done;
    match t.phase() {
        TaskPhase::Succeeded => {
            task.state = AgentTaskState::Succeeded;
            status.task = Some(task);
            status.state = ScaleInState::Drained;
            status.message = None;
            let note = format!(
                "{} moved; {} left the Qdrant cluster; the StatefulSet shrinks to {}",
                status.shards_moved,
                leaving_pods(c, status.from, status.to).join(", "),
                status.to
            );
            Ok(Scaled {
                replicas: status.to,
                status: Some(status),
                event: Some((false, "ScaleInDrained", note)),
            })
        }
        TaskPhase::Failed | TaskPhase::Cancelled if t.error_reason == "ScaleInRefused" => {
            task.state = AgentTaskState::Failed;
            let said = status.message.clone();
            status.task = Some(task);
            status.retry_after = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                (ctx.now)() + REFUSED_RETRY,
            ));
            let previous = said.map(|m| ScaleIn {
                state: ScaleInState::Refused,
                message: Some(m),
                ..status.clone()
            });
            Ok(refused(c, current, status, previous, t.error.clone()))
        }
        TaskPhase::Failed | TaskPhase::Cancelled => {
            // Nothing is lost: every step either completed or left the
            // replica where it was. A later reconcile plans again from there.
            task.state = AgentTaskState::Failed;
            status.task = Some(task);
            status.message = Some(t.error.clone());
            status.retry_after = Some(later(ctx));
            let note = format!(
                "moving shards failed and is tried again in 30 s: {}",
                t.error
            );
            Ok(Scaled::hold(current, status).with_event(true, "ScaleInFailed", note))
        }
        _ => {
            task.state = AgentTaskState::Running;
            status.task = Some(task);
            Ok(Scaled::hold(current, status))
        }
    }
}
