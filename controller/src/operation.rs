//! Pure: what a backup and a restore decide alike about the cluster they
//! work on, before any agent is asked.

use crate::crd::{ClusterPhase, QdrantCluster};
use kube::ResourceExt;

/// The next step of a backup or a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start the agents' tasks, or follow the running ones.
    Run,
    /// Stay Pending, say why, and look again later.
    Wait {
        reason: &'static str,
        message: String,
    },
    /// End as Failed (undoing what was done).
    Fail {
        reason: &'static str,
        message: String,
    },
    /// Retention expired: delete the resource (its deletionPolicy applies).
    Expire,
    /// Terminal: nothing to do.
    Done,
}

/// Whether the target cluster lets an operation run: it must exist and run
/// the agent; an operation not `started` yet also waits for it to be
/// Running. `None`: go on.
pub fn cluster_gate(
    what: &str,
    name: &str,
    ns: &str,
    cluster: Option<&QdrantCluster>,
    started: bool,
) -> Option<Step> {
    let Some(cluster) = cluster else {
        return Some(if started {
            Step::Fail {
                reason: "ClusterNotFound",
                message: format!("QdrantCluster {name} was deleted during the {what}"),
            }
        } else {
            Step::Wait {
                reason: "ClusterNotFound",
                message: format!("QdrantCluster {name} not found in namespace {ns}"),
            }
        });
    };
    if !cluster.spec.agent.enabled {
        return Some(Step::Fail {
            reason: "AgentDisabled",
            message: format!(
                "QdrantCluster {} runs without the backup agent; set spec.agent.enabled: true",
                cluster.name_any()
            ),
        });
    }
    let phase = cluster.status.as_ref().and_then(|s| s.phase);
    if !started && phase != Some(ClusterPhase::Running) {
        return Some(Step::Wait {
            reason: "ClusterNotReady",
            message: format!(
                "QdrantCluster {} is {}, not Running",
                cluster.name_any(),
                phase
                    .map(|p| format!("{p:?}"))
                    .unwrap_or_else(|| "not yet reconciled".into())
            ),
        });
    }
    None
}
