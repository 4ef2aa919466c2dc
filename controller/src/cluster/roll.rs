//! Rolling a new pod template (a version, config, image, key or resources
//! change) through a cluster's pods. The StatefulSet's `OnDelete` strategy
//! leaves the restarts to the operator: one pod at a time, the highest
//! ordinal first, each only once the one before is Ready again and every
//! shard it holds has an Active replica on another node, so reads go on.
//! Where a shard has no other replica (replication factor 1), the cluster's
//! `spec.updateStrategy.singleReplica` decides: restart anyway, or wait.
//! Pods are evicted, not deleted, so the PodDisruptionBudget holds too.

use crate::crd::{QdrantCluster, SingleReplica};
use crate::runtime::{Context, Error};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, EvictParams, ListParams};
use std::time::Duration;

/// What this reconcile did about pods that run an old template.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rolled {
    /// Why the next restart waits: (reason, message) for the Progressing
    /// condition.
    pub waiting: Option<(&'static str, String)>,
    /// An Event to record: (warning, reason, note).
    pub event: Option<(bool, &'static str, String)>,
    /// Look again soon: pods remain to restart.
    pub requeue: Option<Duration>,
}

const SOON: Duration = Duration::from_secs(5);

fn ordinal(pod: &str) -> i64 {
    pod.rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(-1)
}

fn ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Pure: the shards (collection, shard id) whose only Active replica is on
/// `peer`, from a placement of every collection as any node sees it.
pub fn only_replicas_on(
    placement: &qdrant_agent_proto::v1::GetPlacementResponse,
    peer: u64,
) -> Vec<(String, u32)> {
    let mut only = vec![];
    for c in &placement.collections {
        for s in &c.shards {
            let here = s.replicas.iter().any(|r| r.peer_id == peer);
            let elsewhere = s
                .replicas
                .iter()
                .any(|r| r.peer_id != peer && r.state == "Active");
            if here && !elsewhere {
                only.push((c.name.clone(), s.shard_id));
            }
        }
    }
    only
}

/// Restarts the next pod that runs an old template, when that is safe.
pub async fn step(c: &QdrantCluster, ctx: &Context, sts: &StatefulSet) -> Result<Rolled, Error> {
    let Some(update) = sts.status.as_ref().and_then(|s| s.update_revision.clone()) else {
        return Ok(Rolled::default());
    };
    let ns = c.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = crate::cluster::render::selector_labels(c)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let sts_uid = sts.metadata.uid.clone();
    let mut pods: Vec<Pod> = api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == sts_uid.as_ref())
        })
        .collect();
    pods.sort_by_key(|p| std::cmp::Reverse(ordinal(&p.name_any())));
    let outdated: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.labels().get("controller-revision-hash") != Some(&update))
        .collect();
    let Some(next) = outdated.first() else {
        return Ok(Rolled::default());
    };
    let waiting = |reason: &'static str, message: String| Rolled {
        waiting: Some((reason, message)),
        event: None,
        requeue: Some(SOON),
    };
    // One at a time: the pod restarted last must be back first.
    if let Some(down) = pods.iter().find(|p| !ready(p)) {
        return Ok(waiting(
            "RollingUpdate",
            format!(
                "waiting for pod {} to be Ready before restarting the next ({} of {} pods run the new template)",
                down.name_any(),
                pods.len() - outdated.len(),
                pods.len()
            ),
        ));
    }
    // A backup or restore under way would lose the pod's tasks.
    if let Some(why) = crate::cluster::scale::operation_running(c, ctx).await? {
        return Ok(waiting(
            "RollingUpdate",
            format!("waiting to restart pods until it ends: {why}"),
        ));
    }
    let name = next.name_any();
    let mut event = None;
    if c.spec.cluster.enabled && c.spec.agent.enabled && pods.len() > 1 {
        match only_replicas(c, ctx, &name).await? {
            Ok(only) if only.is_empty() => {}
            Ok(only) => {
                let shards = only
                    .iter()
                    .map(|(c, s)| format!("shard {s} of {c}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                match c.spec.update_strategy.single_replica {
                    SingleReplica::Wait => {
                        return Ok(waiting(
                            "WaitingForReplicas",
                            format!(
                                "pod {name} holds the only Active replica of {shards}; it restarts once another replica is Active (spec.updateStrategy.singleReplica: Wait)"
                            ),
                        ));
                    }
                    SingleReplica::Restart => {
                        event = Some((
                            true,
                            "RestartingSingleReplica",
                            format!(
                                "restarting pod {name}, which holds the only Active replica of {shards}: unavailable until it is back (spec.updateStrategy.singleReplica: Restart; raise the collections' replication factor to avoid it)"
                            ),
                        ));
                    }
                }
            }
            Err(why) => {
                if c.spec.update_strategy.single_replica == SingleReplica::Wait {
                    return Ok(waiting(
                        "WaitingForReplicas",
                        format!("cannot tell which shards pod {name} holds: {why}"),
                    ));
                }
            }
        }
    }
    let evicted = api.evict(&name, &EvictParams::default()).await;
    match evicted {
        Ok(_) => {}
        // The disruption budget allows no eviction now.
        Err(kube::Error::Api(e)) if e.code == 429 => {
            return Ok(waiting(
                "RollingUpdate",
                format!(
                    "the disruption budget allows no restart of pod {name} now: {}",
                    e.message
                ),
            ));
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    let note = format!(
        "restarting pod {name} for the new template ({} of {} pods run it)",
        pods.len() - outdated.len(),
        pods.len()
    );
    Ok(Rolled {
        waiting: Some(("RollingUpdate", note.clone())),
        event: event.or(Some((false, "RestartingPod", note))),
        requeue: Some(SOON),
    })
}

/// The shards whose only Active replica is on `pod`, as the other pods'
/// agents see the cluster; `Ok(Err(why))` when that cannot be told.
async fn only_replicas(
    c: &QdrantCluster,
    ctx: &Context,
    pod: &str,
) -> Result<Result<Vec<(String, u32)>, String>, Error> {
    let (_, seen, unreachable) = match super::scale::survey(c, ctx).await? {
        Ok(s) => s,
        Err(why) => return Ok(Err(why)),
    };
    let Some(peer) = seen
        .iter()
        .find(|s| s.pod == pod)
        .map(|s| s.placement.peer_id)
        .filter(|p| *p != 0)
    else {
        return Ok(Err(format!(
            "the agent of pod {pod} does not answer ({})",
            unreachable.join("; ")
        )));
    };
    // As another node sees the cluster: the pod's own view may be stale.
    let Some(view) = seen.iter().find(|s| s.pod != pod).or(seen.first()) else {
        return Ok(Err("no agent answers".into()));
    };
    Ok(Ok(only_replicas_on(&view.placement, peer)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qdrant_agent_proto::v1::{
        CollectionPlacement, GetPlacementResponse, ReplicaPlacement, ShardPlacement,
    };

    fn placement(shards: &[(u32, &[(u64, &str)])]) -> GetPlacementResponse {
        GetPlacementResponse {
            peer_id: 1,
            collections: vec![CollectionPlacement {
                name: "docs".into(),
                shards: shards
                    .iter()
                    .map(|(id, rs)| ShardPlacement {
                        shard_id: *id,
                        replicas: rs
                            .iter()
                            .map(|(p, s)| ReplicaPlacement {
                                peer_id: *p,
                                state: s.to_string(),
                            })
                            .collect(),
                        shard_key_json: String::new(),
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn a_pod_may_restart_only_when_its_shards_are_active_elsewhere() {
        let p = placement(&[
            (0, &[(1, "Active"), (2, "Active")]),
            (1, &[(2, "Active"), (3, "Partial")]),
            (2, &[(3, "Active")]),
        ]);
        assert_eq!(only_replicas_on(&p, 1), []);
        // Shard 1's other replica is still recovering.
        assert_eq!(only_replicas_on(&p, 2), [("docs".to_string(), 1)]);
        assert_eq!(only_replicas_on(&p, 3), [("docs".to_string(), 2)]);
        assert_eq!(ordinal("vectors-12"), 12);
    }
}
