//! Scale-in without losing a shard. Qdrant moves nothing by itself: a pod
//! removed with its shard replicas takes them with it, and its peer stays in
//! consensus as dead. So before the StatefulSet shrinks, the agent of a pod
//! that stays runs a drain (`StartDrain`): every replica on the pods that
//! leave moves to, or is dropped in favour of, a pod that stays, one at a
//! time, and their peers leave consensus. Only then does the StatefulSet
//! get its new replica count. What cannot be done is refused before
//! anything moves, and the cluster keeps its pods.

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
const WINDOW: Duration = Duration::from_secs(2);
/// How soon a refused scale-in is tried again.
const REFUSED_RETRY: Duration = Duration::from_secs(60);
/// How soon a failed or lost attempt is started again.
const RETRY: Duration = Duration::from_secs(30);

/// When a failed attempt may start again.
fn later(ctx: &Context) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
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
struct Peers {
    agents: Agents,
    ids: Vec<u64>,
    runner: String,
    instance: String,
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
async fn peers(
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

/// One pod's disk under Qdrant's storage, as its agent tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Disk {
    pub pod: String,
    pub free: u64,
    pub total: u64,
    /// What the collections take on it.
    pub collections: u64,
}

/// The disks of `pods`; `None` when an agent cannot tell (it does not see
/// the storage volume, is out of reach, or predates the question): the
/// check is then skipped, as before there was one.
async fn disks(agents: &Agents, pods: &[String]) -> Option<Vec<Disk>> {
    let mut out = vec![];
    for pod in pods {
        let mut client = agents.connect(pod).await.ok()?;
        let d = match client.get_disk(pb::GetDiskRequest {}).await {
            Ok(d) => d.into_inner(),
            Err(e) => {
                tracing::info!(%pod, error = %e.message(), "no disk figures from the agent; the scale-in does not check the disk");
                return None;
            }
        };
        if !d.seen {
            return None;
        }
        out.push(Disk {
            pod: pod.clone(),
            free: d.free_bytes,
            total: d.total_bytes,
            collections: d.collections_bytes,
        });
    }
    Some(out)
}

/// Pure: why the pods that stay cannot take the shards of the pods that
/// leave, or `None`. Shards spread evenly over the staying pods, so each
/// must have room for its share of what the leaving pods' collections take,
/// beyond a reserve of 5% of its volume (Qdrant needs room to optimize
/// segments, and a full disk stops its writes).
pub fn disk_refusal(staying: &Option<Vec<Disk>>, leaving: &Option<Vec<Disk>>) -> Option<String> {
    let (Some(staying), Some(leaving)) = (staying, leaving) else {
        return None;
    };
    let need: u64 = leaving.iter().map(|d| d.collections).sum();
    let share = need.div_ceil(staying.len().max(1) as u64);
    let room = |d: &Disk| d.free.saturating_sub(d.total / 20);
    let tightest = staying.iter().min_by_key(|d| room(d))?;
    if share <= room(tightest) {
        return None;
    }
    let names = |ds: &[Disk]| {
        ds.iter()
            .map(|d| d.pod.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "not enough disk: the pods that leave ({}) hold {} of collection data, about {} for each pod that stays, and {} has {} free beyond a reserve of 5% of its volume ({} free of {}); grow the volumes first (spec.persistence.size), or keep more nodes",
        names(leaving),
        bytes(need),
        bytes(share),
        tightest.pod,
        bytes(room(tightest)),
        bytes(tightest.free),
        bytes(tightest.total),
    ))
}

/// Bytes for people: 1.5 GiB, 200 MiB, 12 KiB.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
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

/// What this reconcile does about evening out the shards.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebalanced {
    pub status: Option<crate::crd::Rebalance>,
    /// An Event to record: (warning, reason, note).
    pub event: Option<(bool, &'static str, String)>,
    pub requeue: Option<Duration>,
}

/// Once every pod of a cluster whose node count changed is ready, one
/// agent moves replicas, one at a time, until every node holds a fair
/// share (`spec.cluster.rebalance`): Qdrant puts nothing on a new node.
/// `settled`: every pod runs the current template and is ready, and no
/// scale-in is under way.
pub async fn rebalance(
    c: &QdrantCluster,
    ctx: &Context,
    settled: bool,
) -> Result<Rebalanced, Error> {
    use crate::crd::Rebalance;
    let previous = c.status.as_ref().and_then(|s| s.rebalance.clone());
    let keep = |status: Option<Rebalance>| Rebalanced {
        status,
        event: None,
        requeue: None,
    };
    let spec = &c.spec;
    if !spec.cluster.enabled || !spec.cluster.rebalance || !spec.agent.enabled || spec.replicas < 2
    {
        return Ok(keep(previous));
    }
    let want = spec.replicas;
    let current = previous.filter(|p| p.replicas == want);
    match current {
        Some(p) if p.done => Ok(keep(Some(p))),
        _ if !settled => Ok(keep(c.status.as_ref().and_then(|s| s.rebalance.clone()))),
        Some(p) => match p.task.clone() {
            Some(t) if t.state == AgentTaskState::Failed => {
                if p.retry_after.as_ref().is_some_and(|r| (ctx.now)() < r.0) {
                    return Ok(Rebalanced {
                        status: Some(p),
                        event: None,
                        requeue: Some(RETRY),
                    });
                }
                start_rebalance(c, ctx, p, t.attempt + 1).await
            }
            Some(t) => follow_rebalance(c, ctx, p, t).await,
            None => start_rebalance(c, ctx, p, 1).await,
        },
        None => {
            let fresh = Rebalance {
                replicas: want,
                done: false,
                task: None,
                shards_moved: 0,
                shards_to_move: 0,
                message: None,
                retry_after: None,
            };
            start_rebalance(c, ctx, fresh, 1).await
        }
    }
}

async fn start_rebalance(
    c: &QdrantCluster,
    ctx: &Context,
    mut status: crate::crd::Rebalance,
    attempt: u32,
) -> Result<Rebalanced, Error> {
    if let Some(why) = operation_running(c, ctx).await? {
        status.task = None;
        status.message = Some(format!("waiting to move shards until it ends: {why}"));
        return Ok(Rebalanced {
            status: Some(status),
            event: None,
            requeue: Some(Duration::from_secs(10)),
        });
    }
    let found = match peers(c, ctx, status.replicas).await? {
        Ok(p) => p,
        Err(why) => {
            status.task = None;
            status.message = Some(why);
            return Ok(Rebalanced {
                status: Some(status),
                event: None,
                requeue: Some(Duration::from_secs(10)),
            });
        }
    };
    let (agents, peers, runner, instance) = (found.agents, found.ids, found.runner, found.instance);
    let task_id = format!(
        "rebalance-{}-{}-{attempt}",
        c.uid().unwrap_or_default(),
        status.replicas
    );
    let task = tasks::task(
        runner,
        task_id.clone(),
        instance,
        attempt,
        std::iter::empty(),
    );
    let req = pb::StartDrainRequest {
        task_id,
        leaving_peer_ids: vec![],
        staying_peer_ids: peers,
        rebalance: true,
    };
    status.task = Some(task.clone());
    status.message = None;
    agents.start_each(vec![(&task, Start::Drain(req))]).await;
    Ok(Rebalanced {
        status: Some(status),
        event: None,
        requeue: Some(Duration::from_secs(2)),
    })
}

async fn follow_rebalance(
    c: &QdrantCluster,
    ctx: &Context,
    mut status: crate::crd::Rebalance,
    mut task: crate::crd::AgentTask,
) -> Result<Rebalanced, Error> {
    let agents = match Agents::of(&ctx.client, &Target::of_cluster(c), &ctx.tls.get()).await {
        Ok(a) => a,
        Err(Halt::Kube(e)) => return Err(e.into()),
        Err(h) => {
            status.message = Some(h.text());
            return Ok(Rebalanced {
                status: Some(status),
                event: None,
                requeue: Some(Duration::from_secs(10)),
            });
        }
    };
    // The request is only re-sent to an agent that forgot the task, which
    // then is lost and planned again.
    let again = Start::Drain(pb::StartDrainRequest {
        task_id: task.task_id.clone(),
        ..Default::default()
    });
    let t = match agents.observe(&task, WINDOW, again).await {
        Observed::Lost(why) => {
            // Started again after a pause, never in a tight loop.
            task.state = AgentTaskState::Failed;
            status.task = Some(task);
            status.message = Some(why);
            status.retry_after = Some(later(ctx));
            return Ok(Rebalanced {
                status: Some(status),
                event: None,
                requeue: Some(Duration::from_secs(30)),
            });
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
            status.done = true;
            status.message = None;
            let event = (status.shards_moved > 0).then(|| {
                (
                    false,
                    "Rebalanced",
                    format!(
                        "moved {} shard replicas so that each of the {} nodes holds a fair share",
                        status.shards_moved, status.replicas
                    ),
                )
            });
            Ok(Rebalanced {
                status: Some(status),
                event,
                requeue: None,
            })
        }
        TaskPhase::Failed | TaskPhase::Cancelled => {
            task.state = AgentTaskState::Failed;
            status.task = Some(task);
            status.message = Some(t.error.clone());
            status.retry_after = Some(later(ctx));
            Ok(Rebalanced {
                status: Some(status),
                event: Some((
                    true,
                    "RebalanceFailed",
                    format!(
                        "evening out the shards failed and is tried again in 30 s: {}",
                        t.error
                    ),
                )),
                requeue: Some(Duration::from_secs(30)),
            })
        }
        _ => {
            task.state = AgentTaskState::Running;
            status.task = Some(task);
            Ok(Rebalanced {
                status: Some(status),
                event: None,
                requeue: Some(Duration::from_secs(2)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn disk(pod: &str, free: u64, total: u64, collections: u64) -> Disk {
        Disk {
            pod: pod.into(),
            free,
            total,
            collections,
        }
    }

    #[test]
    fn a_scale_in_is_refused_when_a_staying_pod_cannot_take_its_share() {
        let leaving = Some(vec![disk("q-2", 5 * GIB, 10 * GIB, 4 * GIB)]);
        // 2 GiB for each of two staying pods; 10 GiB volumes keep 0.5 GiB.
        let roomy = Some(vec![
            disk("q-0", 3 * GIB, 10 * GIB, GIB),
            disk("q-1", 6 * GIB, 10 * GIB, GIB),
        ]);
        assert_eq!(disk_refusal(&roomy, &leaving), None);
        let tight = Some(vec![
            disk("q-0", 9 * GIB, 10 * GIB, GIB),
            disk("q-1", 2 * GIB, 10 * GIB, GIB),
        ]);
        let why = disk_refusal(&tight, &leaving).expect("refused");
        assert!(
            why.contains("(q-2) hold 4.0 GiB")
                && why.contains("2.0 GiB for each pod")
                && why.contains("q-1 has 1.5 GiB free")
                && why.contains("spec.persistence.size"),
            "{why}"
        );
        // An agent that cannot tell: no check, as before there was one.
        assert_eq!(disk_refusal(&None, &leaving), None);
        assert_eq!(disk_refusal(&tight, &None), None);
    }

    #[test]
    fn byte_counts_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(200 << 20), "200.0 MiB");
    }
}
