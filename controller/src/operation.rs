//! Pure: what a backup and a restore decide alike about the cluster they
//! work on, before any agent is asked.

use crate::crd::ClusterReference;
use crate::runtime::Wait;
use crate::target::Target;

/// The next step of a backup or a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start the agents' tasks, or follow the running ones.
    Run,
    /// Stay Pending, say why, and look again later.
    Wait {
        reason: crate::runtime::Wait,
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

/// Whether the target lets an operation run: it must exist and run the
/// agent; an operation not `started` yet also waits for it to be ready.
/// `None`: go on.
pub fn cluster_gate(
    what: &str,
    reference: &ClusterReference,
    ns: &str,
    target: Option<&Target>,
    started: bool,
) -> Option<Step> {
    let Some(target) = target else {
        return Some(if started {
            Step::Fail {
                reason: "ClusterNotFound",
                message: format!("{} was deleted during the {what}", reference.describe()),
            }
        } else {
            Step::Wait {
                reason: Wait::ClusterNotFound,
                message: format!("{} not found in namespace {ns}", reference.describe()),
            }
        });
    };
    if let Some((reason, message)) = &target.unusable {
        return Some(Step::Fail {
            reason,
            message: message.clone(),
        });
    }
    match &target.not_ready {
        Some(message) if !started => Some(Step::Wait {
            reason: Wait::ClusterNotReady,
            message: message.clone(),
        }),
        _ => None,
    }
}
