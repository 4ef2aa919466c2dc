//! What every reconciler shares: one [`Context`], one [`Error`], per-object
//! backoff, the finalizer wrapper, metrics per kind, status and Events, and
//! the loop that runs a controller. The reconcilers (`cluster`, `backup`,
//! `restore`, `schedule`) hold only their own decisions and I/O.

mod backoff;
mod error;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod operation;
pub mod report;
pub mod state;

pub use backoff::{Backoff, backoff};
pub use error::{Error, Halt, Wait};

use crate::agent_client::ClientIdentity;
use crate::pki::Ca;
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Resource, ResourceExt};
use metrics::Metrics;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The field manager of every write, and the Events' reporting controller.
pub const MANAGER: &str = "qdrant-operator";

/// What a reconcile of any kind can reach.
pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The reconcilers' caches, which the backup metrics are computed from.
    pub state: Arc<state::StateMetrics>,
    /// The operator's CA, which signs the agents' server certificates.
    pub ca: Arc<Ca>,
    /// The controller's client certificate for the agents' mutual TLS.
    pub tls: Arc<ClientIdentity>,
    /// The time; fixed in tests.
    pub now: fn() -> jiff::Timestamp,
    /// How long one reconcile follows running agent tasks before it writes
    /// progress and yields.
    pub follow_window: Duration,
    /// The images of clusters that name none.
    pub images: crate::settings::Images,
    /// Set when leader election runs: no reconcile starts once this
    /// process may have lost the lease.
    pub leadership: Option<Arc<lease::Leadership>>,
    /// What storage settings the operator's administrator allows.
    pub storage_policy: crate::settings::StoragePolicy,
    /// This installation of the operator (`<namespace>/<lease name>`): it
    /// claims each resource it reconciles, and leaves alone those another
    /// installation claimed. Empty: no claims (tests of one reconciler).
    pub installation: String,
    /// Resources found claimed by another installation, said once each.
    elsewhere: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Consecutive failures per object UID (UIDs are unique across kinds).
    failures: Backoff,
}

impl Context {
    pub fn new(
        client: kube::Client,
        ca: Arc<Ca>,
        tls: Arc<ClientIdentity>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            state: Default::default(),
            ca,
            tls,
            now: jiff::Timestamp::now,
            follow_window: Duration::from_secs(10),
            images: Default::default(),
            leadership: None,
            storage_policy: Default::default(),
            installation: String::new(),
            elsewhere: Default::default(),
            failures: Backoff::default(),
        }
    }

    /// The delay before looking again at an object that waits: grows with
    /// its consecutive failures like the error backoff.
    pub fn wait_delay<K: Resource>(&self, obj: &K) -> Duration {
        self.failures.next(&obj.uid().unwrap_or_default())
    }
}

/// The kinds the operator reconciles, as the runtime needs them.
pub trait Kind:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Kind for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// Runs one reconcile of `obj`: counts it and its duration under its kind,
/// and resets the object's backoff on success.
pub async fn measured<K: Kind>(
    obj: &K,
    ctx: &Context,
    reconcile: impl Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let kind = Metrics::kind(&K::kind(&()));
    ctx.metrics.reconciles.get_or_create(&kind).inc();
    let result = reconcile.await;
    ctx.metrics
        .duration
        .get_or_create(&kind)
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures.reset(&obj.uid().unwrap_or_default());
    }
    result
}

/// Runs `apply` or, once the object is being deleted, `cleanup`, under the
/// finalizer `name`. The finalizer is held only while `needed` says it
/// protects something (a running operation, objects to delete with the
/// resource): an operation adds it with [`hold`] just before it starts, and
/// it is released at the first reconcile that finds it no longer needed. So
/// a finished or waiting resource never blocks its deletion, or its
/// namespace's, once the operator is gone.
pub async fn finalized<K, A, C>(
    obj: Arc<K>,
    ctx: Arc<Context>,
    name: &str,
    needed: fn(&K) -> bool,
    apply: A,
    cleanup: C,
) -> Result<Action, Error>
where
    K: Kind,
    A: AsyncFnOnce(Arc<K>, &Context) -> Result<Action, Error>,
    C: AsyncFnOnce(Arc<K>, &Context) -> Result<Action, Error>,
{
    let held = obj.finalizers().iter().any(|f| f == name);
    if obj.meta().deletion_timestamp.is_some() {
        if !held {
            return Ok(Action::await_change());
        }
        let action = cleanup(obj.clone(), &ctx).await?;
        release(&*obj, &ctx, name).await?;
        return Ok(action);
    }
    if held && !needed(&obj) {
        release(&*obj, &ctx, name).await?;
    } else if !held && needed(&obj) {
        // Set by an earlier version, or spec.deletionPolicy became Delete.
        hold(&*obj, &ctx, name).await?;
    }
    apply(obj, &ctx).await
}

/// Adds finalizer `name` to `obj` unless it is there.
pub async fn hold<K: Kind>(obj: &K, ctx: &Context, name: &str) -> Result<(), kube::Error> {
    if obj.finalizers().iter().any(|f| f == name) {
        return Ok(());
    }
    edit_finalizers(obj, ctx, |f| {
        if !f.iter().any(|x| x == name) {
            f.push(name.to_string());
        }
    })
    .await
}

/// Removes finalizer `name` from `obj`.
async fn release<K: Kind>(obj: &K, ctx: &Context, name: &str) -> Result<(), kube::Error> {
    match edit_finalizers(obj, ctx, |f| f.retain(|x| x != name)).await {
        // Gone already: nothing left to hold.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other,
    }
}

/// Changes `obj`'s finalizers with `edit`, conditionally on the version
/// read, so another party's finalizer is never lost: a conflict fails the
/// reconcile, which runs again on the object as it is now.
async fn edit_finalizers<K: Kind>(
    obj: &K,
    ctx: &Context,
    edit: impl Fn(&mut Vec<String>),
) -> Result<(), kube::Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let mut finalizers = obj.finalizers().to_vec();
    edit(&mut finalizers);
    let patch = serde_json::json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": obj.resource_version(),
    }});
    api.patch(
        &obj.name_any(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// After a failed reconcile: count it by kind and reason, back off per object.
pub fn error_policy<K: Kind>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    let (n, delay) = ctx.failures.failed(&obj.uid().unwrap_or_default());
    ctx.metrics
        .failures
        .get_or_create(&metrics::ErrorLabel {
            kind: K::kind(&()).into(),
            reason: err.reason().into(),
        })
        .inc();
    tracing::warn!(kind = %K::kind(&()), name = %obj.name_any(), error = %err, failures = n, "reconcile failed");
    Action::requeue(delay)
}

/// Reconciles of one kind running at once. Unbounded, thousands of new
/// objects would each hold a request to the API server at the same time;
/// a running backup or restore holds its slot for one follow window.
pub const CONCURRENCY: u16 = 64;

/// A controller for every namespace's objects of kind `K`.
pub fn controller<K: Kind>(client: &kube::Client) -> Controller<K> {
    Controller::new(
        Api::<K>::all(client.clone()),
        kube::runtime::watcher::Config::default().any_semantic(),
    )
    .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
}

/// The annotation naming the operator installation that manages a resource.
pub const ANN_INSTALLATION: &str = "qdrant.io/managed-by-operator";

/// Whether this installation may reconcile `obj`: it claims an unclaimed
/// one (conditionally on the version read), and leaves one that another
/// installation claimed alone, saying so once in an Event. Two operators
/// installed side by side (the chart and `manifests/`, or two namespaces)
/// would otherwise each re-issue the agents' certificates from their own
/// CA, rolling every cluster's pods for ever.
async fn claimed<K: Kind>(obj: &K, ctx: &Context) -> Result<bool, Error> {
    if ctx.installation.is_empty() {
        return Ok(true);
    }
    match obj.annotations().get(ANN_INSTALLATION) {
        Some(owner) if *owner == ctx.installation => Ok(true),
        Some(owner) => {
            let uid = obj.uid().unwrap_or_default();
            let first = ctx
                .elsewhere
                .lock()
                .map(|mut seen| seen.insert(uid))
                .unwrap_or(false);
            if first {
                let note = format!(
                    "managed by the operator installation {owner}; this one ({}) leaves it alone. Uninstall one of them, or remove the annotation {ANN_INSTALLATION} to hand it over",
                    ctx.installation
                );
                tracing::info!(kind = %K::kind(&()), name = %obj.name_any(), owner = %owner, "managed by another operator installation; left alone");
                report::event(
                    &ctx.recorder,
                    &obj.object_ref(&()),
                    kube::runtime::events::EventType::Warning,
                    "ManagedElsewhere",
                    "Reconcile",
                    note,
                )
                .await;
            }
            Ok(false)
        }
        None if obj.meta().deletion_timestamp.is_some() => Ok(true),
        None => {
            let api: Api<K> =
                Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
            let patch = serde_json::json!({"metadata": {
                "annotations": {ANN_INSTALLATION: ctx.installation},
                "resourceVersion": obj.resource_version(),
            }});
            api.patch(
                &obj.name_any(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await?;
            // The claim's own watch event reconciles it next.
            Ok(false)
        }
    }
}

/// Runs `controller` until shutdown with `reconcile`, measured and backed off.
pub async fn run<K, R, F>(controller: Controller<K>, ctx: Arc<Context>, reconcile: R)
where
    K: Kind,
    R: Fn(Arc<K>, Arc<Context>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let reconcile = Arc::new(reconcile);
    controller
        .shutdown_on_signal()
        .run(
            move |obj: Arc<K>, ctx: Arc<Context>| {
                let reconcile = reconcile.clone();
                async move {
                    if ctx.leadership.as_ref().is_some_and(|l| !l.leads()) {
                        // Paused or cut off past the renew deadline: another
                        // replica may lead by now. Never reconcile then.
                        tracing::error!("the leader lease may be lost; exiting");
                        std::process::exit(1);
                    }
                    match claimed(&*obj, &ctx).await {
                        Ok(true) => {}
                        Ok(false) => return Ok(Action::await_change()),
                        Err(e) => return Err(e),
                    }
                    let fut = reconcile(obj.clone(), ctx.clone());
                    measured(&*obj, &ctx, fut).await
                }
            },
            error_policy,
            ctx,
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}
