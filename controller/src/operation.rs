//! What the backup and restore reconcilers share: their context, error
//! type, the finalizer-wrapped reconcile with per-object backoff, and
//! status writes that happen only on change.

use crate::agent_client::ClientIdentity;
use crate::cluster_controller::{MANAGER, backoff};
use k8s_openapi::NamespaceResourceScope;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
    failures: Mutex<HashMap<String, u32>>,
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
            failures: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The delay before looking again at an object that waits: grows with
    /// its consecutive failures like the error backoff.
    pub fn wait_delay<K: Resource>(&self, obj: &K) -> Duration {
        let n = self.failures().get(&obj.uid().unwrap_or_default()).copied();
        backoff(n.unwrap_or(0) + 1)
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
        ctx.failures().remove(&uid);
    }
    result
}

pub fn error_policy<K: Resource>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    let n = {
        let mut f = ctx.failures();
        let n = f.entry(obj.uid().unwrap_or_default()).or_insert(0);
        *n += 1;
        *n
    };
    tracing::warn!(name = %obj.name_any(), error = %err, failures = n, "reconcile failed");
    Action::requeue(backoff(n))
}
