//! The cluster's Prometheus Operator PodMonitor (`spec.metrics.podMonitor`):
//! Qdrant's `/metrics` scraped with the cluster's API key, and the agents'
//! metrics port. Written only onto a PodMonitor this cluster owns, deleted
//! when turned off; a missing CRD or a refusal is a condition, never a
//! failed reconcile (monitoring is not worth stopping a database for).

use super::render::{self, Names};
use crate::crd::QdrantCluster;
use crate::runtime::Error;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, Resource};
use serde_json::{Value, json};

/// The condition type that reports the PodMonitor.
pub const CONDITION: &str = "Monitored";

/// `monitoring.coreos.com/v1` PodMonitor.
pub fn resource() -> ApiResource {
    ApiResource {
        group: "monitoring.coreos.com".into(),
        version: "v1".into(),
        api_version: "monitoring.coreos.com/v1".into(),
        kind: "PodMonitor".into(),
        plural: "podmonitors".into(),
    }
}

/// The PodMonitor the spec asks for, if it asks for one.
pub fn pod_monitor(c: &QdrantCluster) -> Option<DynamicObject> {
    let m = &c.spec.metrics.pod_monitor;
    if !m.enabled {
        return None;
    }
    let with_interval = |mut e: Value| {
        if let Some(i) = &m.interval {
            e["interval"] = json!(i);
        }
        e
    };
    let mut qdrant = with_interval(json!({"port": "http", "path": "/metrics", "scheme": "http"}));
    if let Some(k) = &c.spec.api_key {
        // /metrics needs a key once one is set; the read-only key suffices.
        let key = k.read_only_secret_ref.as_ref().unwrap_or(&k.secret_ref);
        qdrant["authorization"] = json!({
            "type": "Bearer",
            "credentials": {"name": key.name, "key": key.key},
        });
    }
    let mut endpoints = vec![qdrant];
    if c.spec.agent.enabled && render::agent_wiring(c) >= 1 {
        endpoints.push(with_interval(json!({
            "port": "agent-metrics",
            "path": "/metrics",
            "scheme": "http",
        })));
    }
    let mut meta = render::owned_meta(c, Names::of(c).statefulset());
    meta.labels
        .get_or_insert_with(Default::default)
        .extend(m.labels.clone());
    let mut obj = DynamicObject::new(&Names::of(c).statefulset(), &resource());
    obj.metadata = meta;
    obj.data = json!({
        "spec": {
            "selector": {"matchLabels": render::selector_labels(c)},
            "podMetricsEndpoints": endpoints,
        }
    });
    Some(obj)
}

/// Applies or removes the PodMonitor; the `Monitored` condition to report
/// (ok, reason, message), none when monitoring is off.
pub async fn ensure(
    client: &Client,
    c: &QdrantCluster,
) -> Result<Option<(bool, &'static str, String)>, Error> {
    let ns = c.metadata.namespace.clone().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource());
    let name = Names::of(c).statefulset();
    let Some(desired) = pod_monitor(c) else {
        // Only a cluster that reported a PodMonitor may have one to remove:
        // the others never read the kind (which may not even exist).
        let had = c
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|x| x.type_ == CONDITION));
        if had {
            remove(&api, c, &name).await;
        }
        return Ok(None);
    };
    let existing = match api.get_metadata_opt(&name).await {
        Ok(e) => e,
        Err(e) => return Ok(Some(unavailable(e))),
    };
    if let Some(e) = existing
        && let Err(Error::NotOurs(why)) = super::ours("PodMonitor", &e.metadata, &desired.metadata)
    {
        return Ok(Some((false, "PodMonitorNotOwned", why)));
    }
    let params = PatchParams::apply(crate::runtime::MANAGER).force();
    match api.patch(&name, &params, &Patch::Apply(&desired)).await {
        Ok(_) => Ok(Some((true, "PodMonitorApplied", applied(c, &name)))),
        Err(e) => Ok(Some(unavailable(e))),
    }
}

fn applied(c: &QdrantCluster, name: &str) -> String {
    let key = match &c.spec.api_key {
        Some(k) if k.read_only_secret_ref.is_some() => " with the read-only API key",
        Some(_) => " with the API key",
        None => "",
    };
    let agents = if c.spec.agent.enabled && render::agent_wiring(c) >= 1 {
        " and the agents' metrics port"
    } else {
        ""
    };
    format!("PodMonitor {name} scrapes Qdrant's /metrics{key}{agents}")
}

/// Why the PodMonitor could not be read or written, in words that say what
/// to do.
fn unavailable(e: kube::Error) -> (bool, &'static str, String) {
    match e {
        kube::Error::Api(a) if a.code == 404 => (
            false,
            "PodMonitorUnavailable",
            "the API server does not serve monitoring.coreos.com/v1 PodMonitor: install the Prometheus Operator's CRDs, or turn spec.metrics.podMonitor off".into(),
        ),
        kube::Error::Api(a) if a.code == 403 => (
            false,
            "PodMonitorForbidden",
            format!(
                "the operator may not write PodMonitors (its ClusterRole lacks monitoring.coreos.com podmonitors): {}",
                a.message
            ),
        ),
        kube::Error::Api(a) => (
            false,
            "PodMonitorRefused",
            format!("the API server refused the PodMonitor: {}", a.message),
        ),
        other => (
            false,
            "PodMonitorUnavailable",
            format!("the PodMonitor could not be written: {other}"),
        ),
    }
}

/// Deletes the PodMonitor if it is this cluster's (by owner UID, and only
/// that version of it: a precondition on its UID).
async fn remove(api: &Api<DynamicObject>, c: &QdrantCluster, name: &str) {
    let Ok(Some(e)) = api.get_metadata_opt(name).await else {
        return;
    };
    let uid = c.meta().uid.clone().unwrap_or_default();
    let ours = e
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == uid);
    if !ours {
        return;
    }
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: e.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    if let Err(err) = api.delete(name, &dp).await {
        tracing::warn!(error = %err, podmonitor = name, "could not delete the PodMonitor");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(extra: &str) -> QdrantCluster {
        serde_yaml::from_str(&format!(
            "apiVersion: qdrant.io/v1alpha1\nkind: QdrantCluster\n\
             metadata: {{name: vectors, namespace: prod, uid: u-1}}\n\
             spec: {{version: v1.18.3, {extra}}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn no_pod_monitor_unless_asked() {
        assert!(pod_monitor(&cluster("metrics: {enabled: true}")).is_none());
    }

    #[test]
    fn qdrant_is_scraped_with_the_read_only_key_when_there_is_one() {
        let c = cluster(
            "metrics: {podMonitor: {enabled: true, interval: 15s, labels: {release: prom}}},\
             apiKey: {secretRef: {name: keys, key: full}, readOnlySecretRef: {name: ro, key: k}}",
        );
        let pm = pod_monitor(&c).unwrap();
        assert_eq!(pm.metadata.name.as_deref(), Some("vectors"));
        assert_eq!(pm.metadata.labels.as_ref().unwrap()["release"], "prom");
        assert_eq!(pm.metadata.owner_references.as_ref().unwrap()[0].uid, "u-1");
        let eps = &pm.data["spec"]["podMetricsEndpoints"];
        assert_eq!(eps[0]["port"], "http");
        assert_eq!(eps[0]["interval"], "15s");
        assert_eq!(
            eps[0]["authorization"],
            json!({"type": "Bearer", "credentials": {"name": "ro", "key": "k"}})
        );
        assert_eq!(eps[1]["port"], "agent-metrics");
        assert!(eps[1].get("authorization").is_none());
        assert_eq!(
            pm.data["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
            "vectors"
        );
    }

    #[test]
    fn the_full_key_without_a_read_only_one_and_no_agent_endpoint_without_agents() {
        let c = cluster(
            "metrics: {podMonitor: {enabled: true}}, agent: {enabled: false},\
             apiKey: {secretRef: {name: keys, key: full}}",
        );
        let pm = pod_monitor(&c).unwrap();
        let eps = pm.data["spec"]["podMetricsEndpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0]["authorization"]["credentials"]["name"], "keys");
        assert!(eps[0].get("interval").is_none());
    }
}
