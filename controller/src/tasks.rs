//! Pure: what backups and restores do alike with agent tasks. Tasks are made
//! from a plan, each round of following them is folded into their status
//! and one [`Outcome`], and the agents' final reports become the shard
//! results in status.

use crate::crd::{
    AgentTask, AgentTaskState, CollectionResult, ShardObject, TaskProgress, TaskShard,
};
use qdrant_agent_proto::v1::{self as pb, TaskPhase};
use std::collections::{BTreeMap, HashMap};

/// What following one task found.
#[derive(Debug)]
pub enum Observed {
    Task(Box<pb::Task>),
    /// The agent restarted, went away or forgot the task: why.
    Lost(String),
}

/// One round of following a set of tasks, folded.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Some tasks still run.
    Running,
    /// Every followed task succeeded: the agents' final reports.
    AllSucceeded(Vec<pb::Task>),
    /// Tasks were lost (nothing failed): why, per task.
    Lost(Vec<String>),
    /// A task failed: the agent's reason and message.
    Failed { reason: String, message: String },
}

/// Folds what following `tasks[i]` found (for each followed `i`) into the
/// tasks' state and progress, and the round's outcome. A failure wins over
/// losses, losses over success.
pub fn fold(tasks: &mut [AgentTask], seen: Vec<(usize, Observed)>) -> Outcome {
    let followed = seen.len();
    let mut finished = Vec::new();
    let mut lost = Vec::new();
    let mut failed = None;
    for (i, s) in seen {
        let t = &mut tasks[i];
        match s {
            Observed::Lost(why) => {
                t.state = AgentTaskState::Lost;
                lost.push(why);
            }
            Observed::Task(task) => {
                t.bytes_done = task.bytes_done;
                t.shards_done = task.shards_done;
                match task.phase() {
                    TaskPhase::Succeeded => {
                        t.state = AgentTaskState::Succeeded;
                        finished.push(*task);
                    }
                    TaskPhase::Failed | TaskPhase::Cancelled => {
                        t.state = AgentTaskState::Failed;
                        let reason = if task.error_reason.is_empty() {
                            "TaskFailed".to_string()
                        } else {
                            task.error_reason.clone()
                        };
                        let message = format!("the agent of pod {}: {}", t.pod, task.error);
                        failed.get_or_insert(Outcome::Failed { reason, message });
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some(f) = failed {
        f
    } else if !lost.is_empty() {
        Outcome::Lost(lost)
    } else if finished.len() == followed {
        Outcome::AllSucceeded(finished)
    } else {
        Outcome::Running
    }
}

/// The indexes of the tasks still worth following (not lost).
pub fn live(tasks: &[AgentTask]) -> Vec<usize> {
    (0..tasks.len())
        .filter(|&i| tasks[i].state != AgentTaskState::Lost)
        .collect()
}

/// Progress over the tasks that are not lost, out of `shards_total`.
pub fn progress(tasks: &[AgentTask], shards_total: u32) -> TaskProgress {
    let live = tasks.iter().filter(|t| t.state != AgentTaskState::Lost);
    TaskProgress {
        bytes_done: live.clone().map(|t| t.bytes_done).sum(),
        shards_done: live.map(|t| t.shards_done).sum(),
        shards_total,
    }
}

/// A pod's planned shards as a task, started on the agent instance the
/// survey saw (so a restart of that agent is noticed as a lost task).
pub fn task(
    pod: String,
    task_id: String,
    instance_id: String,
    attempt: u32,
    shards: impl IntoIterator<Item = (String, u32)>,
) -> AgentTask {
    AgentTask {
        task_id,
        instance_id,
        attempt,
        shards: shards
            .into_iter()
            .map(|(collection, shard_id)| TaskShard {
                collection,
                shard_id,
            })
            .collect(),
        state: AgentTaskState::Running,
        bytes_done: 0,
        shards_done: 0,
        pod,
    }
}

/// One task per pod of `planned`, started on the agent instance the survey
/// saw on that pod (`instances`), with ids from `id`.
pub fn from_plan(
    planned: crate::plan::Plan,
    instances: &HashMap<String, String>,
    id: impl Fn(&str) -> String,
    attempt: u32,
) -> Vec<AgentTask> {
    planned
        .into_iter()
        .map(|(pod, shards)| {
            let instance = instances.get(&pod).cloned().unwrap_or_default();
            {
                let task_id = id(&pod);
                task(pod, task_id, instance, attempt, shards)
            }
        })
        .collect()
}

/// The shards of `tasks` grouped by collection, in order: what a task
/// request names.
pub fn by_collection(shards: &[TaskShard]) -> BTreeMap<&str, Vec<u32>> {
    let mut by: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for s in shards {
        by.entry(&s.collection).or_default().push(s.shard_id);
    }
    by
}

/// Per collection, the shard objects the finished tasks reported, each with
/// the pod that handled it.
pub fn results(tasks: &[AgentTask], finished: &[pb::Task]) -> Vec<CollectionResult> {
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
    let detailed = by.values().map(Vec::len).sum::<usize>() <= STATUS_SHARDS;
    by.into_iter()
        .map(|(name, mut shards)| {
            shards.sort_by_key(|s| s.shard_id);
            CollectionResult {
                name,
                objects: shards.len() as u32,
                size_bytes: shards.iter().map(|s| s.size).sum(),
                shards: if detailed { shards } else { vec![] },
            }
        })
        .collect()
}

/// Shard objects listed one by one in status, at most; above, status has
/// per-collection totals (the manifest has every object).
pub const STATUS_SHARDS: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(pods: &[&str]) -> Vec<AgentTask> {
        pods.iter()
            .enumerate()
            .map(|(i, p)| {
                task(
                    p.to_string(),
                    format!("t-{p}"),
                    "i-1".into(),
                    1,
                    [("c".to_string(), i as u32)],
                )
            })
            .collect()
    }

    fn report(t: &AgentTask, phase: TaskPhase, bytes: u64) -> Observed {
        Observed::Task(Box::new(pb::Task {
            task_id: t.task_id.clone(),
            phase: phase as i32,
            bytes_done: bytes,
            shards_done: u32::from(phase == TaskPhase::Succeeded),
            error: if phase == TaskPhase::Failed {
                "Qdrant said no".into()
            } else {
                String::new()
            },
            error_reason: if phase == TaskPhase::Failed {
                "QdrantError".into()
            } else {
                String::new()
            },
            peer_id: 7,
            results: vec![pb::ShardResult {
                collection: t.shards[0].collection.clone(),
                shard_id: Some(t.shards[0].shard_id),
                key: format!("c/{}", t.shards[0].shard_id),
                size: bytes,
                sha256: "ab".into(),
                ..Default::default()
            }],
            ..Default::default()
        }))
    }

    #[test]
    fn a_round_is_running_until_every_followed_task_succeeded() {
        let mut tasks = planned(&["p-0", "p-1"]);
        let seen = vec![
            (0, report(&tasks[0], TaskPhase::Succeeded, 10)),
            (1, report(&tasks[1], TaskPhase::Running, 5)),
        ];
        assert_eq!(fold(&mut tasks, seen), Outcome::Running);
        assert_eq!(tasks[0].state, AgentTaskState::Succeeded);
        assert_eq!(tasks[1].state, AgentTaskState::Running);
        assert_eq!(
            progress(&tasks, 2),
            TaskProgress {
                bytes_done: 15,
                shards_done: 1,
                shards_total: 2
            }
        );
        let seen = vec![
            (0, report(&tasks[0], TaskPhase::Succeeded, 10)),
            (1, report(&tasks[1], TaskPhase::Succeeded, 20)),
        ];
        let Outcome::AllSucceeded(done) = fold(&mut tasks, seen) else {
            panic!("every task succeeded")
        };
        let r = results(&tasks, &done);
        assert_eq!(r.len(), 1);
        let pods: Vec<(Option<u32>, &str)> = r[0]
            .shards
            .iter()
            .map(|s| (s.shard_id, s.pod.as_str()))
            .collect();
        assert_eq!(pods, [(Some(0), "p-0"), (Some(1), "p-1")]);
        assert_eq!(r[0].shards[0].peer_id, Some(7));
    }

    #[test]
    fn a_failure_wins_over_a_loss_and_a_loss_over_success() {
        let mut tasks = planned(&["p-0", "p-1", "p-2"]);
        let seen = vec![
            (0, Observed::Lost("the agent of pod p-0 restarted".into())),
            (1, report(&tasks[1], TaskPhase::Failed, 1)),
            (2, report(&tasks[2], TaskPhase::Succeeded, 1)),
        ];
        assert_eq!(
            fold(&mut tasks, seen),
            Outcome::Failed {
                reason: "QdrantError".into(),
                message: "the agent of pod p-1: Qdrant said no".into()
            }
        );
        assert_eq!(tasks[1].state, AgentTaskState::Failed);

        let mut tasks = planned(&["p-0", "p-1"]);
        let seen = vec![
            (0, Observed::Lost("gone".into())),
            (1, report(&tasks[1], TaskPhase::Succeeded, 4)),
        ];
        assert_eq!(fold(&mut tasks, seen), Outcome::Lost(vec!["gone".into()]));
        // A lost task's progress no longer counts; it is not followed again.
        assert_eq!(live(&tasks), [1]);
        assert_eq!(progress(&tasks, 2).bytes_done, 4);
    }

    #[test]
    fn thousands_of_shards_leave_status_small_with_totals_per_collection() {
        let tasks = planned(&["p-0"]);
        let mut done = pb::Task {
            task_id: tasks[0].task_id.clone(),
            ..Default::default()
        };
        done.results = (0..5000)
            .map(|i| pb::ShardResult {
                collection: format!("c-{}", i % 10),
                shard_id: Some(i),
                key: format!("p-0/c-{}/{i}.snapshot", i % 10),
                size: 2,
                sha256: "0".repeat(64),
                ..Default::default()
            })
            .collect();
        let r = results(&tasks, &[done]);
        assert_eq!(r.len(), 10);
        assert!(
            r.iter()
                .all(|c| c.shards.is_empty() && c.objects == 500 && c.size_bytes == 1000)
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.len() < 4096, "{} bytes", json.len());
    }

    #[test]
    fn a_failed_task_without_a_reason_is_named_task_failed() {
        let mut tasks = planned(&["p-0"]);
        let Observed::Task(mut t) = report(&tasks[0], TaskPhase::Cancelled, 0) else {
            unreachable!()
        };
        t.error = "cancelled".into();
        let seen = vec![(0, Observed::Task(t))];
        let Outcome::Failed { reason, .. } = fold(&mut tasks, seen) else {
            panic!("a cancelled task fails the round")
        };
        assert_eq!(reason, "TaskFailed");
    }
}
