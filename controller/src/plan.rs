//! Which pod's agent backs up which shard: every shard of every requested
//! collection exactly once, from one Active replica, spread across pods.
//! Pure functions over Qdrant's shard placement
//! (`GET /collections/{c}/cluster`) and the pods' peer ids (agent `Status`).

use std::collections::{BTreeMap, BTreeSet};

/// One replica of a shard: the peer holding it and Qdrant's state for it
/// (`Active`, `Dead`, `Partial`, `Initializing`, `Listener`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub peer_id: u64,
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlacement {
    pub collection: String,
    pub shard_id: u32,
    pub replicas: Vec<Replica>,
}

/// A pod whose agent can take tasks, with its Qdrant peer id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPod {
    pub name: String,
    pub peer_id: u64,
}

/// Per pod, the (collection, shard) pairs its agent backs up.
pub type Plan = BTreeMap<String, Vec<(String, u32)>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "shard {shard} of collection {collection:?} has no Active replica on a pod with a ready agent (replicas: {states})"
    )]
    NoActiveReplica {
        collection: String,
        shard: u32,
        states: String,
    },
}

impl PlanError {
    pub fn reason(&self) -> &'static str {
        match self {
            PlanError::NoActiveReplica { .. } => "NoActiveReplica",
        }
    }
}

/// Assigns every shard to one pod holding an Active replica of it. Shards
/// with the fewest candidates are placed first, each on the candidate with
/// the least work so far (ties: pod name), so load spreads evenly.
/// `exclude` names pods not to use (their agent failed or restarted).
pub fn plan(
    placements: &[ShardPlacement],
    pods: &[AgentPod],
    exclude: &BTreeSet<String>,
) -> Result<Plan, PlanError> {
    let by_peer: BTreeMap<u64, &AgentPod> = pods
        .iter()
        .filter(|p| !exclude.contains(&p.name))
        .map(|p| (p.peer_id, p))
        .collect();
    let mut candidates: Vec<(&ShardPlacement, Vec<&str>)> = Vec::new();
    for s in placements {
        let mut c: Vec<&str> = s
            .replicas
            .iter()
            .filter(|r| r.state == "Active")
            .filter_map(|r| by_peer.get(&r.peer_id).map(|p| p.name.as_str()))
            .collect();
        c.sort();
        c.dedup();
        if c.is_empty() {
            let states = s
                .replicas
                .iter()
                .map(|r| format!("peer {} {}", r.peer_id, r.state))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(PlanError::NoActiveReplica {
                collection: s.collection.clone(),
                shard: s.shard_id,
                states: if states.is_empty() {
                    "none".into()
                } else {
                    states
                },
            });
        }
        candidates.push((s, c));
    }
    candidates.sort_by(|(a, ca), (b, cb)| {
        ca.len()
            .cmp(&cb.len())
            .then_with(|| (&a.collection, a.shard_id).cmp(&(&b.collection, b.shard_id)))
    });
    let mut out: Plan = BTreeMap::new();
    for (s, c) in candidates {
        let load = |p: &str| out.get(p).map_or(0, Vec::len);
        let pick = c
            .iter()
            .min_by_key(|p| (load(p), **p))
            .copied()
            .unwrap_or_default();
        out.entry(pick.to_string())
            .or_default()
            .push((s.collection.clone(), s.shard_id));
    }
    for v in out.values_mut() {
        v.sort();
    }
    Ok(out)
}

/// The placement an agent reported (`GetPlacement`) as planning input.
pub fn from_agent(p: &qdrant_agent_proto::v1::GetPlacementResponse) -> Vec<ShardPlacement> {
    p.collections
        .iter()
        .flat_map(|c| {
            c.shards.iter().map(|s| ShardPlacement {
                collection: c.name.clone(),
                shard_id: s.shard_id,
                replicas: s
                    .replicas
                    .iter()
                    .map(|r| Replica {
                        peer_id: r.peer_id,
                        state: r.state.clone(),
                    })
                    .collect(),
            })
        })
        .collect()
}

/// The agent task id of one pod's part of a backup: derived from the
/// backup's UID, so a retried reconcile or a restarted controller attaches
/// to the running task instead of starting a second upload. `attempt`
/// counts re-plans after an agent failed.
pub fn task_id(backup_uid: &str, pod: &str, attempt: u32) -> String {
    format!("backup-{backup_uid}-{pod}-{attempt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(c: &str, shard: u32, replicas: &[(u64, &str)]) -> ShardPlacement {
        ShardPlacement {
            collection: c.into(),
            shard_id: shard,
            replicas: replicas
                .iter()
                .map(|(p, s)| Replica {
                    peer_id: *p,
                    state: (*s).into(),
                })
                .collect(),
        }
    }

    fn pods(n: u64) -> Vec<AgentPod> {
        (0..n)
            .map(|i| AgentPod {
                name: format!("q-{i}"),
                peer_id: 100 + i,
            })
            .collect()
    }

    #[test]
    fn replication_factor_three_is_stored_once_and_spread_over_pods() {
        // 6 shards, each on all 3 nodes.
        let ps: Vec<_> = (0..6)
            .map(|s| {
                placement(
                    "docs",
                    s,
                    &[(100, "Active"), (101, "Active"), (102, "Active")],
                )
            })
            .collect();
        let p = plan(&ps, &pods(3), &BTreeSet::new()).unwrap();
        let all: Vec<(String, u32)> = p.values().flatten().cloned().collect();
        assert_eq!(all.len(), 6, "each shard once");
        let mut ids: Vec<u32> = all.iter().map(|(_, s)| *s).collect();
        ids.sort();
        assert_eq!(ids, [0, 1, 2, 3, 4, 5]);
        assert!(
            p.values().all(|v| v.len() == 2),
            "two shards per pod: {p:?}"
        );
    }

    #[test]
    fn only_active_replicas_on_usable_pods_are_chosen() {
        let ps = vec![
            placement("docs", 0, &[(100, "Dead"), (101, "Active")]),
            placement("docs", 1, &[(100, "Active"), (101, "Partial")]),
            placement("imgs", 0, &[(102, "Active"), (101, "Active")]),
        ];
        let p = plan(&ps, &pods(3), &BTreeSet::new()).unwrap();
        assert_eq!(p["q-1"], [("docs".to_string(), 0)]);
        assert_eq!(p["q-0"], [("docs".to_string(), 1)]);
        assert_eq!(p["q-2"], [("imgs".to_string(), 0)]);
        // q-1's agent restarted: its shard moves to the other Active replica if any.
        let p = plan(&ps[2..], &pods(3), &BTreeSet::from(["q-2".to_string()])).unwrap();
        assert_eq!(p["q-1"], [("imgs".to_string(), 0)]);
    }

    #[test]
    fn a_shard_without_an_active_replica_fails_the_plan_by_name() {
        let ps = vec![
            placement("docs", 0, &[(100, "Active")]),
            placement("docs", 3, &[(100, "Dead"), (101, "Initializing")]),
        ];
        let err = plan(&ps, &pods(2), &BTreeSet::new()).unwrap_err();
        assert_eq!(err.reason(), "NoActiveReplica");
        let msg = err.to_string();
        assert!(msg.contains("shard 3 of collection \"docs\""), "{msg}");
        assert!(
            msg.contains("peer 100 Dead, peer 101 Initializing"),
            "{msg}"
        );
        // An Active replica on a peer with no known pod is no help either.
        let err = plan(
            &[placement("docs", 0, &[(999, "Active")])],
            &pods(1),
            &BTreeSet::new(),
        )
        .unwrap_err();
        assert_eq!(err.reason(), "NoActiveReplica");
    }

    #[test]
    fn every_shard_is_planned_exactly_once_on_an_active_replica_for_many_layouts() {
        // A deterministic sweep over layouts: n pods, shards with rf replicas
        // at rotating positions, some replicas not Active.
        for n in 1..=5u64 {
            for rf in 1..=n {
                let ps: Vec<_> = (0..12u32)
                    .map(|s| {
                        let reps: Vec<(u64, &str)> = (0..rf)
                            .map(|k| {
                                (
                                    100 + (s as u64 + k) % n,
                                    if (s + k as u32) % 4 == 3 && k > 0 {
                                        "Dead"
                                    } else {
                                        "Active"
                                    },
                                )
                            })
                            .collect();
                        placement("c", s, &reps)
                    })
                    .collect();
                let p = plan(&ps, &pods(n), &BTreeSet::new()).unwrap();
                let mut seen = BTreeSet::new();
                for (pod, shards) in &p {
                    let peer = 100 + pod.trim_start_matches("q-").parse::<u64>().unwrap();
                    for (c, s) in shards {
                        assert!(seen.insert(*s), "shard {s} twice");
                        let r = ps[*s as usize]
                            .replicas
                            .iter()
                            .find(|r| r.peer_id == peer)
                            .unwrap();
                        assert_eq!(r.state, "Active", "{c}/{s} from a non-Active replica");
                    }
                }
                assert_eq!(seen.len(), 12, "n={n} rf={rf}");
            }
        }
    }

    #[test]
    fn an_agents_placement_plans_directly() {
        use qdrant_agent_proto::v1 as pb;
        let rep = |peer, state: &str| pb::ReplicaPlacement {
            peer_id: peer,
            state: state.into(),
        };
        let resp = pb::GetPlacementResponse {
            peer_id: 100,
            collections: vec![pb::CollectionPlacement {
                name: "docs".into(),
                shards: vec![
                    pb::ShardPlacement {
                        shard_id: 0,
                        replicas: vec![rep(100, "Dead"), rep(101, "Active")],
                        shard_key_json: String::new(),
                    },
                    pb::ShardPlacement {
                        shard_id: 1,
                        replicas: vec![rep(100, "Active"), rep(101, "Active")],
                        shard_key_json: String::new(),
                    },
                ],
            }],
        };
        let p = plan(&from_agent(&resp), &pods(2), &BTreeSet::new()).unwrap();
        assert_eq!(p["q-1"], [("docs".to_string(), 0)]);
        assert_eq!(p["q-0"], [("docs".to_string(), 1)]);
    }

    #[test]
    fn task_ids_are_stable_per_backup_pod_and_attempt() {
        assert_eq!(task_id("u-1", "q-0", 0), task_id("u-1", "q-0", 0));
        assert_ne!(task_id("u-1", "q-0", 0), task_id("u-1", "q-1", 0));
        assert_ne!(task_id("u-1", "q-0", 0), task_id("u-1", "q-0", 1));
    }
}
