//! What the backup and restore reconcilers share: their context, error
//! type, the finalizer-wrapped reconcile with per-object backoff, and
//! status writes that happen only on change.

use crate::agent_client::ClientIdentity;
use crate::cluster_controller::{Backoff, MANAGER};
use crate::crd::{
    AgentTask, AgentTaskState, OperationPhase, QdrantBackup, QdrantBackupStatus, QdrantRestore,
    QdrantRestoreStatus,
};
use crate::report;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// Cleanup cannot finish yet (e.g. no agent answers to delete objects).
    #[error("{0}")]
    Retry(String),
}

pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    /// The controller's client certificate for the agents' mutual TLS.
    pub tls: Arc<ClientIdentity>,
    /// The time; fixed in tests.
    pub now: fn() -> jiff::Timestamp,
    /// How long one reconcile follows running tasks before it writes
    /// progress and yields.
    pub follow_window: Duration,
    failures: Backoff,
}

impl Context {
    pub fn new(client: kube::Client, tls: Arc<ClientIdentity>) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            tls,
            now: jiff::Timestamp::now,
            follow_window: Duration::from_secs(10),
            failures: Backoff::default(),
        }
    }

    /// The delay before looking again at an object that waits: grows with
    /// its consecutive failures like the error backoff.
    pub fn wait_delay<K: Resource>(&self, obj: &K) -> Duration {
        self.failures.next(&obj.uid().unwrap_or_default())
    }
}

/// Runs `apply` or, once the object is being deleted, `cleanup`, under the
/// finalizer `name`; a success resets the object's backoff.
pub async fn reconcile<K, A, C>(
    obj: Arc<K>,
    ctx: Arc<Context>,
    name: &str,
    apply: A,
    cleanup: C,
) -> Result<Action, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    A: AsyncFnOnce(Arc<K>, &Context) -> Result<Action, Error>,
    C: AsyncFnOnce(Arc<K>, &Context) -> Result<Action, Error>,
{
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = obj.uid().unwrap_or_default();
    let result = finalizer(&api, name, obj, |ev| async {
        match ev {
            Finalizer::Apply(o) => apply(o, &ctx).await,
            Finalizer::Cleanup(o) => cleanup(o, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.failures.reset(&uid);
    }
    result
}

pub fn error_policy<K: Resource>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    let (n, delay) = ctx.failures.failed(&obj.uid().unwrap_or_default());
    tracing::warn!(name = %obj.name_any(), error = %err, failures = n, "reconcile failed");
    Action::requeue(delay)
}

/// The status fields a backup and a restore have in common.
pub struct Common<'a> {
    pub phase: &'a mut Option<OperationPhase>,
    pub completion_time: &'a mut Option<Time>,
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
                    completion_time: &mut s.completion_time,
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

/// Pending (or still InProgress) with the reason it cannot go on now; an
/// Event when the reason is new.
pub async fn wait<K: Operation>(
    obj: &K,
    ctx: &Context,
    reason: &str,
    message: String,
) -> Result<(), Error> {
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
    let now = (ctx.now)();
    let mut status = obj.status().cloned().unwrap_or_default();
    let c = K::common(&mut status);
    *c.phase = Some(OperationPhase::Failed);
    *c.completion_time = Some(Time(now));
    *c.error = Some(message.clone());
    for t in c.tasks.iter_mut() {
        if t.state == AgentTaskState::Running {
            t.state = AgentTaskState::Failed;
        }
    }
    *c.observed_generation = obj.meta().generation;
    *c.conditions = vec![report::ready(
        false,
        reason,
        message.clone(),
        now,
        c.conditions,
        obj.meta().generation,
    )];
    write(ctx, obj, &status).await?;
    report::event(
        &ctx.recorder,
        &obj.object_ref(&()),
        EventType::Warning,
        "Failed",
        K::ACTION,
        format!("{reason}: {message}"),
    )
    .await;
    Ok(Action::await_change())
}

/// Ends the operation as Completed with `status` (its results filled in).
pub async fn completed<K: Operation>(
    obj: &K,
    ctx: &Context,
    mut status: K::Status,
    message: String,
) -> Result<Action, kube::Error> {
    let now = (ctx.now)();
    let c = K::common(&mut status);
    *c.phase = Some(OperationPhase::Completed);
    *c.completion_time = Some(Time(now));
    *c.conditions = vec![report::ready(
        true,
        "Completed",
        message.clone(),
        now,
        c.conditions,
        obj.meta().generation,
    )];
    write(ctx, obj, &status).await?;
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
