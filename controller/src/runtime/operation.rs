//! Status and Events of a backup or a restore: waiting, failed and
//! completed are written the same way for both.

use super::{Context, Error, Halt, report};
use crate::crd::{
    AgentTask, AgentTaskState, OperationPhase, QdrantBackup, QdrantBackupStatus, QdrantRestore,
    QdrantRestoreStatus,
};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The status fields a backup and a restore have in common.
pub struct Common<'a> {
    pub phase: &'a mut Option<OperationPhase>,
    pub start_time: &'a mut Option<Time>,
    pub completion_time: &'a mut Option<Time>,
    pub duration: &'a mut Option<String>,
    pub error: &'a mut Option<String>,
    pub tasks: &'a mut Vec<AgentTask>,
    pub conditions: &'a mut Vec<Condition>,
    pub observed_generation: &'a mut Option<i64>,
}

/// A QdrantBackup or a QdrantRestore, for the steps they share.
pub trait Operation:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
{
    type Status: Default + Clone + PartialEq + Serialize;
    /// The Event action: `Backup` or `Restore`.
    const ACTION: &'static str;
    fn status(&self) -> Option<&Self::Status>;
    fn common(s: &mut Self::Status) -> Common<'_>;
}

macro_rules! operation {
    ($kind:ty, $status:ty, $action:literal) => {
        impl Operation for $kind {
            type Status = $status;
            const ACTION: &'static str = $action;
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
            fn common(s: &mut $status) -> Common<'_> {
                Common {
                    phase: &mut s.phase,
                    start_time: &mut s.start_time,
                    completion_time: &mut s.completion_time,
                    duration: &mut s.duration,
                    error: &mut s.error,
                    tasks: &mut s.tasks,
                    conditions: &mut s.conditions,
                    observed_generation: &mut s.observed_generation,
                }
            }
        }
    };
}
operation!(QdrantBackup, QdrantBackupStatus, "Backup");
operation!(QdrantRestore, QdrantRestoreStatus, "Restore");

/// Writes `status` if it differs from what `obj` has.
pub async fn write<K: Operation>(
    ctx: &Context,
    obj: &K,
    status: &K::Status,
) -> Result<(), kube::Error> {
    report::write_status(&ctx.client, obj, obj.status(), status).await
}

/// Writes `status` and records an Event saying what just happened (a start,
/// a re-plan): the status first, so the Event never runs ahead of it.
pub async fn announce<K: Operation>(
    obj: &K,
    ctx: &Context,
    status: &K::Status,
    type_: EventType,
    reason: &str,
    message: String,
) -> Result<(), kube::Error> {
    write(ctx, obj, status).await?;
    report::event(
        &ctx.recorder,
        &obj.object_ref(&()),
        type_,
        reason,
        K::ACTION,
        message,
    )
    .await;
    Ok(())
}

/// How long an object waiting for a watched change sleeps without one: a
/// safety net only, so thousands of waiting objects cost the API server
/// next to nothing.
pub const WATCHED_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Where a step left an operation, once waits are written.
pub enum Settled {
    Action(Action),
    /// End it as Failed, after undoing what it did.
    Fail {
        reason: String,
        message: String,
    },
}

/// Turns a step's outcome into the reconcile's: a wait is written and
/// looked at again with backoff; a failure is handed back to the caller,
/// which undoes what the operation did, then calls [`failed`].
pub async fn settle<K: Operation>(
    obj: &K,
    ctx: &Context,
    outcome: Result<Action, Halt>,
) -> Result<Settled, Error> {
    match outcome {
        Ok(a) => Ok(Settled::Action(a)),
        Err(Halt::Wait { reason, message }) => {
            wait(obj, ctx, reason, message).await?;
            let delay = if reason.watched() {
                WATCHED_WAIT
            } else {
                ctx.wait_delay(obj)
            };
            Ok(Settled::Action(Action::requeue(delay)))
        }
        Err(Halt::Fail { reason, message }) => Ok(Settled::Fail { reason, message }),
        Err(Halt::Kube(e)) => Err(e.into()),
    }
}

/// Pending (or still InProgress) with the reason it cannot go on now; an
/// Event when the reason is new.
pub async fn wait<K: Operation>(
    obj: &K,
    ctx: &Context,
    reason: super::Wait,
    message: String,
) -> Result<(), Error> {
    let reason = reason.as_str();
    let mut status = obj.status().cloned().unwrap_or_default();
    let c = K::common(&mut status);
    let changed = c.conditions.first().map(|c| c.reason.as_str()) != Some(reason);
    c.phase.get_or_insert(OperationPhase::Pending);
    *c.observed_generation = obj.meta().generation;
    *c.conditions = vec![report::ready(
        false,
        reason,
        message.clone(),
        (ctx.now)(),
        c.conditions,
        obj.meta().generation,
    )];
    write(ctx, obj, &status).await?;
    if changed {
        report::event(
            &ctx.recorder,
            &obj.object_ref(&()),
            EventType::Normal,
            reason,
            "Wait",
            message,
        )
        .await;
    }
    Ok(())
}

/// Ends the operation as Failed, with the reason in its Ready condition and
/// a Warning Event. The caller cleans up first.
pub async fn failed<K: Operation>(
    obj: &K,
    ctx: &Context,
    reason: &str,
    message: String,
) -> Result<Action, Error> {
    let mut status = obj.status().cloned().unwrap_or_default();
    let c = K::common(&mut status);
    *c.error = Some(message.clone());
    for t in c.tasks.iter_mut() {
        if t.state == AgentTaskState::Running {
            t.state = AgentTaskState::Failed;
        }
    }
    *c.observed_generation = obj.meta().generation;
    let note = format!("{reason}: {message}");
    end(obj, ctx, status, OperationPhase::Failed, reason, message).await?;
    report::event(
        &ctx.recorder,
        &obj.object_ref(&()),
        EventType::Warning,
        "Failed",
        K::ACTION,
        note,
    )
    .await;
    Ok(Action::await_change())
}

/// Ends the operation as Completed with `status` (its results filled in).
pub async fn completed<K: Operation>(
    obj: &K,
    ctx: &Context,
    status: K::Status,
    message: String,
) -> Result<Action, kube::Error> {
    end(
        obj,
        ctx,
        status,
        OperationPhase::Completed,
        "Completed",
        message.clone(),
    )
    .await?;
    report::event(
        &ctx.recorder,
        &obj.object_ref(&()),
        EventType::Normal,
        "Completed",
        K::ACTION,
        message,
    )
    .await;
    Ok(Action::await_change())
}

/// A duration as `kubectl get` shows one: `45s`, `2m30s`, `1h5m`, `2d3h`.
pub fn human_duration(d: jiff::SignedDuration) -> String {
    let s = d.as_secs().max(0);
    let (days, hours, mins, secs) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, _) => format!("{mins}m{secs}s"),
        (0, _, _) => format!("{hours}h{mins}m"),
        _ => format!("{days}d{hours}h"),
    }
}

/// Writes the terminal `phase` with its time and Ready condition.
async fn end<K: Operation>(
    obj: &K,
    ctx: &Context,
    mut status: K::Status,
    phase: OperationPhase,
    reason: &str,
    message: String,
) -> Result<(), kube::Error> {
    let now = (ctx.now)();
    let c = K::common(&mut status);
    *c.phase = Some(phase);
    *c.completion_time = Some(Time(now));
    *c.duration = c
        .start_time
        .as_ref()
        .map(|s| human_duration(now.duration_since(s.0)));
    *c.conditions = vec![report::ready(
        phase == OperationPhase::Completed,
        reason,
        message,
        now,
        c.conditions,
        obj.meta().generation,
    )];
    write(ctx, obj, &status).await
}

#[cfg(test)]
mod tests {
    use super::human_duration;
    use jiff::SignedDuration;

    #[test]
    fn durations_read_as_kubectl_shows_them() {
        let d = SignedDuration::from_secs;
        assert_eq!(human_duration(d(45)), "45s");
        assert_eq!(human_duration(d(150)), "2m30s");
        assert_eq!(human_duration(d(3900)), "1h5m");
        assert_eq!(human_duration(d(2 * 86400 + 3 * 3600 + 59)), "2d3h");
        assert_eq!(human_duration(d(-5)), "0s");
    }
}
