//! What a backup or a restore works on, read from its cluster reference: a
//! QdrantCluster, or a StatefulSet this operator does not run (Qdrant's own
//! Helm chart) whose pods carry the injected agent. Both come down to the
//! same facts: whether its agents can serve at all, whether a new operation
//! should wait, and how to reach the agents.

use crate::crd::{ClusterKind, ClusterPhase, ClusterReference, QdrantCluster};
use crate::names;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::api::Api;

/// A backup's or restore's cluster, as its agents are concerned.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub reference: ClusterReference,
    pub namespace: String,
    /// Why its agents cannot serve at all (reason, message): the operation
    /// fails.
    pub unusable: Option<(&'static str, String)>,
    /// Why an operation that has not started yet waits: not every pod is
    /// ready, or its pods are being replaced.
    pub not_ready: Option<String>,
    pub reach: Reach,
}

/// How the controller finds and reaches a target's agents.
#[derive(Debug, Clone, PartialEq)]
pub struct Reach {
    /// Label selector of its pods.
    pub selector: String,
    /// The StatefulSet whose pods they are: other pods the selector matches
    /// (a chart's `helm test` pod carries the same labels) are not Qdrant's.
    pub statefulset: String,
    /// The Secret holding the agents' token.
    pub token_secret: String,
    /// The agent's container name and gRPC port.
    pub container: String,
    pub port: i32,
    /// `<headless service>.<namespace>.svc`: the agents' certificates name
    /// `<pod>.` under it.
    pub domain: String,
}

impl Target {
    /// The target `r` names in `ns`; `None` when it does not exist.
    pub async fn get(
        client: &kube::Client,
        ns: &str,
        r: &ClusterReference,
    ) -> Result<Option<Target>, kube::Error> {
        Ok(match r.kind {
            ClusterKind::QdrantCluster => Api::<QdrantCluster>::namespaced(client.clone(), ns)
                .get_opt(&r.name)
                .await?
                .map(|c| Target::of_cluster(&c)),
            ClusterKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get_opt(&r.name)
                .await?
                .map(|s| Target::of_statefulset(&s)),
        })
    }

    pub fn of_cluster(c: &QdrantCluster) -> Target {
        let ns = c.namespace().unwrap_or_default();
        let names = names::Names::of(c);
        let unusable = (!c.spec.agent.enabled).then(|| {
            (
                "AgentDisabled",
                format!(
                    "QdrantCluster {} runs without the backup agent; set spec.agent.enabled: true",
                    c.name_any()
                ),
            )
        });
        let phase = c.status.as_ref().and_then(|s| s.phase);
        let not_ready = (phase != Some(ClusterPhase::Running)).then(|| {
            format!(
                "QdrantCluster {} is {}, not Running",
                c.name_any(),
                phase
                    .map(|p| format!("{p:?}"))
                    .unwrap_or_else(|| "not yet reconciled".into())
            )
        });
        Target {
            reference: ClusterReference {
                kind: ClusterKind::QdrantCluster,
                name: c.name_any(),
            },
            unusable,
            not_ready,
            reach: Reach {
                selector: selector_string(&LabelSelector {
                    match_labels: Some(names::selector_labels(c)),
                    ..Default::default()
                }),
                statefulset: names.statefulset(),
                token_secret: names.agent_token(),
                container: names::AGENT_CONTAINER.into(),
                port: c.spec.agent.port,
                domain: format!("{}.{ns}.svc", names.headless()),
            },
            namespace: ns,
        }
    }

    pub fn of_statefulset(s: &StatefulSet) -> Target {
        let ns = s.namespace().unwrap_or_default();
        let name = s.name_any();
        let spec = s.spec.clone().unwrap_or_default();
        let service = spec.service_name.clone().unwrap_or_default();
        let opted_in = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .and_then(|l| l.get(names::OPT_IN))
            .is_some_and(|v| v == "true");
        let owner = s
            .owner_references()
            .iter()
            .find(|o| o.kind == "QdrantCluster")
            .map(|o| o.name.clone());
        let unusable = if let Some(owner) = owner {
            Some((
                "InvalidSpec",
                format!(
                    "StatefulSet {name} is run by QdrantCluster {owner}; refer to that instead: clusterRef: {{kind: QdrantCluster, name: {owner}}}"
                ),
            ))
        } else if !opted_in {
            Some((
                "AgentNotInjected",
                format!(
                    "the pods of StatefulSet {name} do not ask for the backup agent: label its pod template {}: \"true\" (Qdrant's Helm chart: podLabels) and let its pods roll",
                    names::OPT_IN
                ),
            ))
        } else if service.is_empty() {
            Some((
                "InvalidSpec",
                format!(
                    "StatefulSet {name} names no serviceName, and its agents' certificates are issued for <pod>.<serviceName>.{ns}.svc"
                ),
            ))
        } else {
            None
        };
        let want = spec.replicas.unwrap_or(1);
        let st = s.status.clone().unwrap_or_default();
        let ready = st.ready_replicas.unwrap_or(0);
        let rolling_update = spec
            .update_strategy
            .as_ref()
            .and_then(|u| u.type_.as_deref())
            .is_none_or(|t| t == "RollingUpdate");
        let not_ready = if st.observed_generation < s.metadata.generation {
            Some(format!(
                "StatefulSet {name} has not yet acted on its latest spec"
            ))
        } else if ready < want {
            Some(format!(
                "StatefulSet {name} has {ready} of {want} pods ready"
            ))
        } else if rolling_update
            && st.update_revision.is_some()
            && st.current_revision != st.update_revision
        {
            Some(format!(
                "StatefulSet {name} is replacing its pods ({} of {want} updated)",
                st.updated_replicas.unwrap_or(0)
            ))
        } else {
            None
        };
        Target {
            reference: ClusterReference {
                kind: ClusterKind::StatefulSet,
                name: name.clone(),
            },
            unusable,
            not_ready,
            reach: Reach {
                selector: selector_string(&spec.selector),
                statefulset: name.clone(),
                token_secret: names::token_secret(&name),
                container: names::CONTAINER.into(),
                port: names::PORT,
                domain: format!("{service}.{ns}.svc"),
            },
            namespace: ns,
        }
    }

    /// Why pod `pod`, which has no agent container, cannot serve, and how
    /// to give it one; `skipped` is why the injection webhook left it out,
    /// when it said so on the pod.
    pub fn missing_agent(&self, pod: &str, skipped: Option<&str>) -> String {
        if let Some(why) = skipped {
            return format!(
                "pod {pod} has no backup agent: the injection webhook did not add it because {why}; fix that, then delete the pod (kubectl delete pod -n {} {pod}) so that StatefulSet {} re-creates it",
                self.namespace, self.reference.name
            );
        }
        match self.reference.kind {
            ClusterKind::QdrantCluster => format!(
                "pod {pod} runs without its backup agent; it gets one when QdrantCluster {} has rolled its pods",
                self.reference.name
            ),
            ClusterKind::StatefulSet => format!(
                "pod {pod} has no backup agent: it was created while the operator's injection webhook did not answer; delete it (kubectl delete pod -n {} {pod}) and StatefulSet {} re-creates it with the agent",
                self.namespace, self.reference.name
            ),
        }
    }
}

impl Reach {
    /// Whether `pod` is one of the target's Qdrant pods.
    pub fn owns(&self, pod: &k8s_openapi::api::core::v1::Pod) -> bool {
        pod.owner_references()
            .iter()
            .any(|o| o.kind == "StatefulSet" && o.name == self.statefulset)
    }
}

/// A label selector in the form list requests take
/// (`a=b,c in (d,e),!f`).
pub fn selector_string(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(extra: &str, status: &str) -> StatefulSet {
        serde_yaml::from_str(&format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: qdrant, namespace: search, generation: 2}}\n\
             spec:\n  replicas: 3\n  serviceName: qdrant-headless\n\
             \x20 selector: {{matchLabels: {{app.kubernetes.io/name: qdrant, app.kubernetes.io/instance: qdrant}}}}\n\
             \x20 template:\n    metadata: {{labels: {{app.kubernetes.io/name: qdrant, app.kubernetes.io/instance: qdrant{extra}}}}}\n\
             \x20   spec: {{containers: [{{name: qdrant, image: qdrant/qdrant}}]}}\n\
             status: {{replicas: 3, observedGeneration: 2{status}}}\n"
        ))
        .unwrap()
    }

    const OPTED: &str = ", qdrant.io/backup-agent: \"true\"";
    const READY: &str =
        ", readyReplicas: 3, updatedReplicas: 3, currentRevision: r1, updateRevision: r1";

    #[test]
    fn a_chart_statefulset_that_asks_for_the_agent_is_reached_through_its_own_service() {
        let t = Target::of_statefulset(&sts(OPTED, READY));
        assert_eq!((t.unusable.clone(), t.not_ready.clone()), (None, None));
        assert_eq!(
            t.reach,
            Reach {
                selector: "app.kubernetes.io/instance=qdrant,app.kubernetes.io/name=qdrant".into(),
                statefulset: "qdrant".into(),
                token_secret: "qdrant-agent-token".into(),
                container: "qdrant-agent".into(),
                port: 50051,
                domain: "qdrant-headless.search.svc".into(),
            }
        );
        assert_eq!(t.reference.describe(), "StatefulSet qdrant");
    }

    #[test]
    fn a_statefulset_without_the_label_says_how_to_add_it() {
        let t = Target::of_statefulset(&sts("", READY));
        let (reason, message) = t.unusable.unwrap();
        assert_eq!(reason, "AgentNotInjected");
        assert!(
            message.contains("qdrant.io/backup-agent: \"true\"") && message.contains("podLabels"),
            "{message}"
        );
    }

    #[test]
    fn a_statefulset_of_a_qdrant_cluster_points_to_the_cluster() {
        let mut s = sts(OPTED, READY);
        s.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "qdrant.io/v1alpha1".into(),
                kind: "QdrantCluster".into(),
                name: "vectors".into(),
                uid: "u".into(),
                ..Default::default()
            },
        ]);
        let (reason, message) = Target::of_statefulset(&s).unusable.unwrap();
        assert_eq!(reason, "InvalidSpec");
        assert!(
            message.contains("clusterRef: {kind: QdrantCluster, name: vectors}"),
            "{message}"
        );
    }

    #[test]
    fn a_new_operation_waits_for_every_pod_and_for_a_roll_to_end() {
        let not_ready = |status: &str| Target::of_statefulset(&sts(OPTED, status)).not_ready;
        assert_eq!(
            not_ready(", readyReplicas: 2").unwrap(),
            "StatefulSet qdrant has 2 of 3 pods ready"
        );
        assert_eq!(
            not_ready(
                ", readyReplicas: 3, updatedReplicas: 1, currentRevision: r1, updateRevision: r2"
            )
            .unwrap(),
            "StatefulSet qdrant is replacing its pods (1 of 3 updated)"
        );
        let mut stale = sts(OPTED, READY);
        stale.metadata.generation = Some(3);
        assert!(Target::of_statefulset(&stale).not_ready.is_some());
    }

    #[test]
    fn selectors_with_expressions_read_as_list_requests_want_them() {
        let s: LabelSelector = serde_yaml::from_str(
            "matchLabels: {app: qdrant}\nmatchExpressions:\n\
             - {key: tier, operator: In, values: [a, b]}\n\
             - {key: old, operator: NotIn, values: [x]}\n\
             - {key: has, operator: Exists}\n\
             - {key: hasnt, operator: DoesNotExist}\n",
        )
        .unwrap();
        assert_eq!(
            selector_string(&s),
            "app=qdrant,tier in (a,b),old notin (x),has,!hasnt"
        );
    }
}
