//! Evening the shards out over the nodes once their count changed
//! (`spec.cluster.rebalance`): Qdrant puts nothing on a new node, so one
//! agent moves replicas, one at a time, until every node holds a fair share.

use crate::agents::{Agents, Start};
use crate::crd::{AgentTaskState, QdrantCluster};
use crate::runtime::{Context, Error, Halt};
use crate::target::Target;
use crate::tasks::{self, Observed};
use kube::ResourceExt;
use qdrant_agent_proto::v1::{self as pb, TaskPhase};
use std::time::Duration;

use super::scale::{RETRY, WINDOW, later, operation_running, peers};

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
