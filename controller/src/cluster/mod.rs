//! The QdrantCluster reconciler: read what is there, decide (pure, in
//! `decide`), apply the rendered objects with server-side apply, patch the
//! status when it changed, and record an Event on each phase transition.

use crate::crd::{ClusterPhase, QdrantCluster, QdrantClusterStatus};
use crate::runtime::{self, Context, Error, report};
use decide::{Observed, conditions, decide};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use sha2::Digest;
use std::sync::Arc;
use std::time::Duration;

/// The finalizer earlier versions set; removed wherever it is found.
pub const FINALIZER: &str = "qdrant.io/cluster";

mod config;
mod credentials;
pub mod decide;
pub mod disk;
pub mod monitor;
mod owned;
pub mod rebalance;
pub mod render;
pub mod roll;
pub mod scale;
pub mod volumes;

pub use credentials::{ensure_agent_tls, ensure_agent_token, until};
pub use owned::ours;
use owned::{check_ours, ssa};

/// Reconciles one QdrantCluster. It has no finalizer: owned objects go with
/// it through owner references.
pub async fn reconcile(c: Arc<QdrantCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = c.namespace().unwrap_or_else(|| "default".into());
    let api: Api<QdrantCluster> = Api::namespaced(ctx.client.clone(), &ns);
    if c.finalizers().iter().any(|f| f == FINALIZER) {
        drop_legacy_finalizer(&api, &c).await
    } else if c.metadata.deletion_timestamp.is_some() {
        Ok(Action::await_change())
    } else {
        match apply(c.clone(), &ctx).await {
            Err(Error::Kube(kube::Error::Api(e))) if matches!(e.code, 400 | 403 | 409 | 422) => {
                let message = format!(
                    "the API server refused an object of this cluster: {}",
                    e.message
                );
                refused(&c, &ctx, "ApplyRefused", message).await;
                Err(Error::Kube(kube::Error::Api(e)))
            }
            Err(Error::NotOurs(message)) => {
                refused(&c, &ctx, "ObjectNotOwned", message.clone()).await;
                Err(Error::NotOurs(message))
            }
            other => other,
        }
    }
}

/// One of the cluster's objects cannot be written (the API server refused
/// an invalid or forbidden change, or an object of that name is someone
/// else's): the Ready condition and a Warning Event say which and why,
/// instead of the reconcile failing silently until the spec changes.
async fn refused(c: &QdrantCluster, ctx: &Context, reason: &str, message: String) {
    let previous = c.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.conditions = vec![report::ready(
        false,
        reason,
        message.clone(),
        jiff::Timestamp::now(),
        &previous.conditions,
        c.metadata.generation,
    )];
    if let Err(e) = report::write_status(&ctx.client, c, Some(&previous), &status).await {
        tracing::warn!(error = %e, "could not write the status");
    }
    let same = previous
        .conditions
        .first()
        .map(|c| (c.reason.as_str(), c.message.as_str()))
        == Some((reason, message.as_str()));
    if !same {
        report::event(
            &ctx.recorder,
            &c.object_ref(&()),
            EventType::Warning,
            reason,
            "Reconcile",
            message,
        )
        .await;
    }
}

async fn apply(c: Arc<QdrantCluster>, ctx: &Context) -> Result<Action, Error> {
    let ns = c.namespace().unwrap_or_else(|| "default".into());
    let client = &ctx.client;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut observed = Observed::default();
    // Qdrant reads its keys at start: a changed key rolls the pods.
    let mut keys = sha2::Sha256::new();
    if let Some(k) = &c.spec.api_key {
        for r in std::iter::once(&k.secret_ref).chain(k.read_only_secret_ref.as_ref()) {
            match secrets.get_opt(&r.name).await? {
                None => observed.missing_secrets.push(r.name.clone()),
                Some(s) => {
                    let value = s
                        .data
                        .unwrap_or_default()
                        .remove(&r.key)
                        .unwrap_or_default();
                    keys.update(format!("{}/{}:", r.name, r.key));
                    keys.update(&value.0);
                    keys.update(b"\n");
                }
            }
        }
    }
    let keys = hex::encode(keys.finalize());
    let before = decide(&c, &observed);
    if !before.apply {
        let scale_in = c.status.as_ref().and_then(|s| s.scale_in.clone());
        let rebalance = c.status.as_ref().and_then(|s| s.rebalance.clone());
        write_status(&c, ctx, &before, None, scale_in, rebalance).await?;
        // The Secret's watch wakes it when the Secret appears.
        return Ok(Action::requeue(crate::runtime::operation::WATCHED_WAIT));
    }
    let (sa, cm) = (render::service_account(&c), render::config_map(&c));
    let (headless, service) = (render::headless_service(&c), render::client_service(&c));
    let pdb = render::pod_disruption_budget(&c);
    // Nothing is written until every name is known to be free or ours.
    check_ours(client, &ns, &sa).await?;
    check_ours(client, &ns, &cm).await?;
    check_ours(client, &ns, &headless).await?;
    check_ours(client, &ns, &service).await?;
    check_ours(client, &ns, &pdb).await?;
    // A downgrade, or an upgrade that skips a minor version, is refused:
    // the pods keep the version they run.
    let running = c.status.as_ref().and_then(|s| s.version.clone());
    let refused_version = decide::version_change(running.as_deref(), &c.spec.version).err();
    let rendered = match (&refused_version, &running) {
        (Some(_), Some(v)) => {
            let mut kept = (*c).clone();
            kept.spec.version = v.clone();
            kept
        }
        _ => (*c).clone(),
    };
    let mut desired = render::statefulset(&rendered, &ctx.images);
    if c.spec.api_key.is_some()
        && let Some(meta) = desired
            .spec
            .as_mut()
            .and_then(|s| s.template.metadata.as_mut())
    {
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(render::ANN_API_KEY.into(), keys);
    }
    let name = render::Names::of(&c).statefulset();
    let existing = Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .get_opt(&name)
        .await?;
    if let Some(e) = &existing {
        ours("StatefulSet", &e.metadata, &desired.metadata)?;
        if let Some(action) = recreate_for_parallel(ctx, &c, e).await? {
            return Ok(action);
        }
    }
    // Agents read renewed certificate files without a restart: a renewal
    // only needs this reconcile to come back in time for it.
    let mut renew_at = None;
    if c.spec.agent.enabled {
        let n = render::Names::of(&c);
        ensure_agent_token(&secrets, render::owned_meta(&c, n.agent_token())).await?;
        let dns = crate::pki::agent_dns_names(&n.headless(), &ns);
        let meta = render::owned_meta(&c, n.agent_tls());
        renew_at = Some(ensure_agent_tls(client, &secrets, meta, dns, &ctx.ca).await?);
    }
    ssa(client, &ns, &sa).await?;
    ssa(client, &ns, &cm).await?;
    ssa(client, &ns, &headless).await?;
    ssa(client, &ns, &service).await?;
    ssa(client, &ns, &pdb).await?;
    // A scale-in shrinks the StatefulSet only once the pods that leave
    // hold no shard replica.
    let current = existing
        .as_ref()
        .and_then(|e| e.spec.as_ref()?.replicas)
        .unwrap_or(c.spec.replicas);
    let scaled = scale::step(&c, ctx, current).await?;
    say(ctx, &c, "Scale", &scaled.event).await;
    if let Some(spec) = desired.spec.as_mut() {
        spec.replicas = Some(scaled.replicas);
    }
    if let (Some(spec), Some(e)) = (desired.spec.as_mut(), existing.as_ref()) {
        // The claim template cannot change: it keeps its size, and a larger
        // persistence.size grows each claim instead.
        if let Some(size) = volumes::template_size(e) {
            render::set_claim_size(spec, &size);
        }
    }
    let sts = ssa(client, &ns, &desired).await?;
    // Pods that run an old template restart one at a time, each once its
    // shards are Active elsewhere.
    let rolled = roll::step(&c, ctx, &sts).await?;
    say(ctx, &c, "Roll", &rolled.event).await;
    observed.statefulset = Some(sts.clone());
    observed.claims = volumes::grow(ctx, &c, &name).await?;
    let mut d = decide(&c, &observed);
    decide::rolling(&mut d, rolled.waiting.as_ref());
    decide::scaling(&mut d, scaled.status.as_ref());
    if let Some(why) = &refused_version {
        decide::version_refused(&mut d, why);
        let said = c
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|r| r.reason == "VersionRefused" && &r.message == why);
        if !said {
            report::event(
                &ctx.recorder,
                &c.object_ref(&()),
                EventType::Warning,
                "VersionRefused",
                "Reconcile",
                why.clone(),
            )
            .await;
        }
    }
    // Once every pod runs and no scale-in is under way, the shards are
    // evened out over the nodes.
    let settled = d.phase == ClusterPhase::Running && scaled.status.is_none();
    let rebalanced = rebalance::rebalance(&c, ctx, settled).await?;
    say(ctx, &c, "Rebalance", &rebalanced.event).await;
    decide::rebalancing(&mut d, rebalanced.status.as_ref());
    if let Some((ok, reason, message)) = monitor::ensure(client, &c).await? {
        let said = c.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|x| x.type_ == monitor::CONDITION && x.reason == reason)
        });
        if !ok && !said {
            say(ctx, &c, "Monitor", &Some((true, reason, message.clone()))).await;
        }
        d.conditions.push((monitor::CONDITION, ok, reason, message));
    }
    write_status(
        &c,
        ctx,
        &d,
        Some(&sts),
        scaled.status.clone(),
        rebalanced.status.clone(),
    )
    .await?;
    let resizing = d
        .conditions
        .iter()
        .any(|(ty, ok, ..)| *ty == "VolumesSized" && !ok);
    let next = match d.phase {
        _ if scaled.requeue().is_some() => scaled.requeue().unwrap_or_default(),
        _ if rebalanced.requeue.is_some() => rebalanced.requeue.unwrap_or_default(),
        _ if rolled.requeue.is_some() => rolled.requeue.unwrap_or_default(),
        // Nothing announces a finished resize but the claims' status.
        _ if resizing => Duration::from_secs(30),
        ClusterPhase::Running => Duration::from_secs(300),
        _ => Duration::from_secs(15),
    };
    Ok(Action::requeue(match renew_at {
        Some(at) => next.min(until(at)),
        None => next,
    }))
}

/// When the latest Completed backup of `c` finished, from the backup
/// reconciler's cache (`None` until that has started).
fn last_backup(c: &QdrantCluster, ctx: &Context) -> Option<Time> {
    let ns = c.namespace();
    ctx.state
        .backups
        .get()?
        .state()
        .iter()
        .filter(|b| {
            b.namespace() == ns
                && b.spec.cluster_ref.kind == crate::crd::ClusterKind::QdrantCluster
                && b.spec.cluster_ref.name == c.name_any()
                && b.status.as_ref().and_then(|s| s.phase)
                    == Some(crate::crd::OperationPhase::Completed)
        })
        .filter_map(|b| b.status.as_ref()?.completion_time.clone())
        .max_by_key(|t| t.0)
}

async fn write_status(
    c: &QdrantCluster,
    ctx: &Context,
    d: &decide::Decision,
    sts: Option<&StatefulSet>,
    scale_in: Option<crate::crd::ScaleIn>,
    rebalance: Option<crate::crd::Rebalance>,
) -> Result<(), Error> {
    let previous = c.status.clone().unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let st = sts.and_then(|s| s.status.clone()).unwrap_or_default();
    let template = sts.and_then(|s| s.spec.as_ref()?.template.spec.clone());
    let image = |name: &str| {
        template
            .iter()
            .flat_map(|t| &t.containers)
            .find(|c| c.name == name)
            .and_then(|c| c.image.clone())
    };
    let every_pod_runs_it = d.phase == ClusterPhase::Running
        || d.conditions.first().is_some_and(|c| {
            c.2 == "VersionRefused"
                && st.ready_replicas == Some(st.replicas)
                && st.updated_replicas == Some(st.replicas)
        });
    let status = QdrantClusterStatus {
        phase: Some(d.phase),
        replicas: st.replicas,
        ready_replicas: st.ready_replicas.unwrap_or(0),
        // What the pods run once every one runs the template.
        version: if every_pod_runs_it {
            image("qdrant")
                .and_then(|i| i.rsplit_once(':').map(|(_, t)| t.to_string()))
                .or_else(|| previous.version.clone())
        } else {
            previous.version.clone()
        },
        agent_image: image(render::AGENT_CONTAINER).or_else(|| previous.agent_image.clone()),
        agent_wiring: template
            .iter()
            .flat_map(|t| &t.containers)
            .find(|c| c.name == render::AGENT_CONTAINER)
            .map(render::wiring_of)
            .or(previous.agent_wiring),
        endpoint: Some(render::endpoint(c)),
        last_backup_time: last_backup(c, ctx).or_else(|| previous.last_backup_time.clone()),
        conditions: conditions(&previous.conditions, d, c.metadata.generation, now),
        observed_generation: c.metadata.generation,
        scale_in,
        rebalance,
    };
    if status == previous {
        return Ok(());
    }
    report::write_status(&ctx.client, c, Some(&previous), &status).await?;
    // A refused expansion changes no phase, but the user must hear of it.
    let refused = |cs: &[Condition]| {
        cs.iter()
            .find(|c| c.type_ == "VolumesSized" && c.reason == "ExpansionRefused")
            .map(|c| c.message.clone())
    };
    if let (Some(msg), None) = (refused(&status.conditions), refused(&previous.conditions)) {
        report::event(
            &ctx.recorder,
            &c.object_ref(&()),
            EventType::Warning,
            "ExpansionRefused",
            "Reconcile",
            msg,
        )
        .await;
    }
    if previous.phase != Some(d.phase) {
        let (reason, ok, msg) = d
            .conditions
            .first()
            .map(|(_, ok, r, m)| (*r, *ok, m.clone()))
            .unwrap_or(("", true, String::new()));
        let type_ = match d.phase {
            ClusterPhase::Failed | ClusterPhase::Degraded => EventType::Warning,
            _ if !ok && reason == "ReplicasNotReady" => EventType::Warning,
            _ => EventType::Normal,
        };
        let note = if msg.is_empty() {
            reason.to_string()
        } else {
            format!("{reason}: {msg}")
        };
        let reason = format!("{:?}", d.phase);
        report::event(
            &ctx.recorder,
            &c.object_ref(&()),
            type_,
            &reason,
            "Reconcile",
            note,
        )
        .await;
    }
    Ok(())
}

/// Records `event` ((warning, reason, note)) on the cluster, if any.
async fn say(
    ctx: &Context,
    c: &QdrantCluster,
    action: &str,
    event: &Option<(bool, &'static str, String)>,
) {
    if let Some((warning, reason, note)) = event {
        let t = if *warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        report::event(
            &ctx.recorder,
            &c.object_ref(&()),
            t,
            reason,
            action,
            note.clone(),
        )
        .await;
    }
}

/// A StatefulSet made by an earlier version with `podManagementPolicy:
/// OrderedReady` (immutable) is deleted without its pods (orphaned: they go
/// on running, with their volumes) and made again with `Parallel`, which
/// adopts them: a cluster made with one node must be able to become
/// distributed.
async fn recreate_for_parallel(
    ctx: &Context,
    c: &QdrantCluster,
    existing: &StatefulSet,
) -> Result<Option<Action>, Error> {
    let policy = existing
        .spec
        .as_ref()
        .and_then(|s| s.pod_management_policy.as_deref())
        .unwrap_or("OrderedReady");
    if policy == "Parallel" {
        return Ok(None);
    }
    // Only once the StatefulSet controller has synced it (its pods are
    // adopted): a pod adopted while the StatefulSet is being deleted
    // would be deleted with it.
    let synced = existing.status.as_ref().and_then(|s| s.observed_generation)
        == existing.metadata.generation;
    if !synced {
        return Ok(Some(Action::requeue(Duration::from_secs(2))));
    }
    let api: Api<StatefulSet> =
        Api::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
    let dp = kube::api::DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
        preconditions: Some(kube::api::Preconditions {
            uid: existing.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&existing.name_any(), &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    report::event(
        &ctx.recorder,
        &c.object_ref(&()),
        EventType::Normal,
        "RecreatingStatefulSet",
        "Reconcile",
        format!(
            "StatefulSet {} had podManagementPolicy {policy}, which cannot change: it is made again with Parallel; its pods and volumes stay",
            existing.name_any()
        ),
    )
    .await;
    Ok(Some(Action::requeue(Duration::from_secs(2))))
}

/// Earlier versions put a finalizer on every QdrantCluster, though nothing
/// needs cleaning up (owned objects go through owner references, volumes
/// follow `persistence.deleteClaimsOnDelete`): it only blocked deleting a
/// cluster, or its namespace, while the operator was down. It is removed;
/// the resourceVersion makes the write conditional on what was read.
async fn drop_legacy_finalizer(
    api: &Api<QdrantCluster>,
    c: &QdrantCluster,
) -> Result<Action, Error> {
    let keep: Vec<&String> = c.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    let patch = serde_json::json!({"metadata": {
        "finalizers": keep,
        "resourceVersion": c.resource_version(),
    }});
    api.patch(
        &c.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(Action::await_change())
}

/// Runs the QdrantCluster controller until shutdown.
pub async fn run(ctx: Arc<Context>) {
    let client = &ctx.client;
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=qdrant-operator");
    let controller = runtime::controller::<QdrantCluster>(client)
        .owns(Api::<StatefulSet>::all(client.clone()), managed.clone())
        .owns(Api::<Service>::all(client.clone()), managed.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), managed.clone())
        .owns(
            Api::<PodDisruptionBudget>::all(client.clone()),
            managed.clone(),
        )
        .owns(Api::<ServiceAccount>::all(client.clone()), managed);
    let store = controller.store();
    let controller = controller.watches(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default(),
        move |s| crate::wake::clusters_using(&store, &s),
    );
    runtime::run(controller, ctx.clone(), reconcile).await;
}
