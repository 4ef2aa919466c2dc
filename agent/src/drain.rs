//! Emptying the peers that leave a Qdrant cluster (a scale-in): every shard
//! replica they hold moves to a peer that stays, or is dropped where a
//! staying peer already holds the shard, one at a time, each waited for
//! until Qdrant reports it done; then the peers are removed from Qdrant's
//! consensus. Qdrant moves nothing by itself, and a node removed with its
//! shards takes them with it.

use crate::error::{Error, Result};
use crate::node::Node;
use crate::progress::Progress;
use crate::qdrant::Placement;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a drain is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DrainRequest {
    /// The peers that leave (none: only rebalance).
    pub leaving: Vec<u64>,
    /// The peers that stay (the agent's own among them).
    pub staying: Vec<u64>,
    /// Then move replicas among the staying peers until each holds a fair
    /// share (within one replica of the others).
    pub rebalance: bool,
}

/// One step of a drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Move the replica on `from` (leaving) to `to` (staying).
    Move {
        collection: String,
        shard: u32,
        from: u64,
        to: u64,
    },
    /// Drop the replica on `peer` (leaving): staying peers hold the shard.
    Drop {
        collection: String,
        shard: u32,
        peer: u64,
    },
}

impl Step {
    fn describe(&self) -> String {
        match self {
            Step::Move {
                collection,
                shard,
                from,
                to,
            } => format!("moving shard {shard} of {collection} from peer {from} to peer {to}"),
            Step::Drop {
                collection,
                shard,
                peer,
            } => format!("dropping the replica of shard {shard} of {collection} on peer {peer}"),
        }
    }
}

/// The replicas of each shard of a collection: shard id -> (peer, state).
pub type Replicas = BTreeMap<u32, Vec<(u64, String)>>;

/// A collection's replicas as its placement (seen from any peer) shows them.
pub fn replicas(p: &Placement) -> Replicas {
    let mut r = Replicas::new();
    for s in &p.local_shards {
        r.entry(s.shard_id)
            .or_default()
            .push((p.peer_id, s.state.clone()));
    }
    for s in &p.remote_shards {
        r.entry(s.shard_id)
            .or_default()
            .push((s.peer_id, s.state.clone()));
    }
    r
}

/// Pure: the steps that empty `leaving` of `collection`, keeping each shard
/// at `min(replication_factor, staying)` replicas on staying peers where it
/// can. Targets are the staying peers with the fewest replicas (`load`,
/// updated as steps are planned), so shards spread evenly. Refused, saying
/// how to fix it, when the collection asks for more replicas than nodes
/// stay, or a shard has no Active replica to copy from.
pub fn plan(
    collection: &str,
    replicas: &Replicas,
    replication_factor: u32,
    req: &DrainRequest,
    load: &mut BTreeMap<u64, usize>,
) -> std::result::Result<Vec<Step>, String> {
    let staying: BTreeSet<u64> = req.staying.iter().copied().collect();
    let leaving: BTreeSet<u64> = req.leaving.iter().copied().collect();
    if replication_factor as usize > staying.len()
        && replicas
            .values()
            .flatten()
            .any(|(p, _)| leaving.contains(p))
    {
        return Err(format!(
            "collection {collection} has replication factor {replication_factor}, more than the {} nodes that would stay; lower it first (PATCH /collections/{collection} with {{\"replication_factor\": {}}}), or keep more nodes",
            staying.len(),
            staying.len()
        ));
    }
    let want = (replication_factor.max(1) as usize).min(staying.len());
    let mut steps = vec![];
    for (&shard, holders) in replicas {
        let mut on_staying: BTreeSet<u64> = holders
            .iter()
            .filter(|(p, _)| staying.contains(p))
            .map(|(p, _)| *p)
            .collect();
        let mut gone: Vec<&(u64, String)> = holders
            .iter()
            .filter(|(p, _)| leaving.contains(p))
            .collect();
        if gone.is_empty() {
            continue;
        }
        // Active replicas are the ones to copy from.
        gone.sort_by_key(|(_, state)| state != "Active");
        let active_anywhere = holders.iter().any(|(_, s)| s == "Active");
        for (peer, state) in gone {
            let target = (on_staying.len() < want)
                .then(|| {
                    staying
                        .iter()
                        .filter(|p| !on_staying.contains(p))
                        .min_by_key(|p| (load.get(p).copied().unwrap_or(0), **p))
                        .copied()
                })
                .flatten();
            match target {
                Some(to) if state == "Active" => {
                    *load.entry(to).or_default() += 1;
                    on_staying.insert(to);
                    steps.push(Step::Move {
                        collection: collection.to_string(),
                        shard,
                        from: *peer,
                        to,
                    });
                }
                Some(_) if !active_anywhere => {
                    return Err(format!(
                        "shard {shard} of collection {collection} has no Active replica to move; wait until Qdrant has recovered it, then scale in"
                    ));
                }
                _ => steps.push(Step::Drop {
                    collection: collection.to_string(),
                    shard,
                    peer: *peer,
                }),
            }
        }
        if on_staying.is_empty() {
            return Err(format!(
                "shard {shard} of collection {collection} has no Active replica to move; wait until Qdrant has recovered it, then scale in"
            ));
        }
    }
    Ok(steps)
}

/// Pure: moves that even out the replicas over `peers` (all collections
/// together), one replica at a time from the most loaded peer to the least
/// loaded one that lacks that shard, until no two peers differ by more than
/// one replica or nothing more can move. `all` is (collection, replicas).
pub fn plan_rebalance(all: &[(String, Replicas)], peers: &[u64]) -> Vec<Step> {
    let mut holders: BTreeMap<(String, u32), BTreeSet<u64>> = BTreeMap::new();
    let mut active: BTreeSet<(String, u32, u64)> = BTreeSet::new();
    let mut load: BTreeMap<u64, usize> = peers.iter().map(|p| (*p, 0)).collect();
    for (c, r) in all {
        for (shard, hs) in r {
            for (p, state) in hs {
                holders.entry((c.clone(), *shard)).or_default().insert(*p);
                if state == "Active" {
                    active.insert((c.clone(), *shard, *p));
                }
                if let Some(n) = load.get_mut(p) {
                    *n += 1;
                }
            }
        }
    }
    let mut steps = vec![];
    // Each move narrows the spread by one, so this many always suffice.
    for _ in 0..holders.len() * peers.len().max(1) {
        let Some((&max, &hi)) = load
            .iter()
            .max_by_key(|(p, n)| (**n, std::cmp::Reverse(**p)))
        else {
            break;
        };
        // The least loaded peer that can take a shard of `max`.
        let mut candidates: Vec<(u64, usize)> = load
            .iter()
            .filter(|(_, n)| hi > **n + 1)
            .map(|(p, n)| (*p, *n))
            .collect();
        candidates.sort_by_key(|(p, n)| (*n, *p));
        let found = candidates.iter().find_map(|(to, _)| {
            holders
                .iter()
                .find(|((c, s), hs)| {
                    hs.contains(&max) && !hs.contains(to) && active.contains(&(c.clone(), *s, max))
                })
                .map(|((c, s), _)| (c.clone(), *s, *to))
        });
        let Some((collection, shard, to)) = found else {
            break;
        };
        if let Some(hs) = holders.get_mut(&(collection.clone(), shard)) {
            hs.remove(&max);
            hs.insert(to);
        }
        active.remove(&(collection.clone(), shard, max));
        active.insert((collection.clone(), shard, to));
        *load.entry(max).or_default() -= 1;
        *load.entry(to).or_default() += 1;
        steps.push(Step::Move {
            collection,
            shard,
            from: max,
            to,
        });
    }
    steps
}

/// How long one move or drop may take before the drain fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(3600);
const POLL: Duration = Duration::from_millis(500);

/// Runs a drain through the local Qdrant: plans every collection first
/// (refusing before anything moves), runs the steps one at a time, then
/// removes the leaving peers. Repeatable: a step already done plans no more.
pub async fn run(
    node: &Node,
    req: &DrainRequest,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<()> {
    if req.staying.is_empty() || (req.leaving.is_empty() && !req.rebalance) {
        return Err(Error::Invalid(
            "a drain needs peers that stay, and peers that leave or a rebalance".into(),
        ));
    }
    let q = &node.qdrant;
    let mut load: BTreeMap<u64, usize> = req.staying.iter().map(|p| (*p, 0)).collect();
    let mut planned = vec![];
    let collections = q.collections().await?;
    for c in &collections {
        crate::keys::validate_segment("collection", c)?;
        let r = replicas(&q.placement(c).await?);
        for holders in r.values() {
            for (p, _) in holders {
                if let Some(n) = load.get_mut(p) {
                    *n += 1;
                }
            }
        }
        let rf = q
            .collection(c)
            .await?
            .and_then(|v| v.pointer("/config/params/replication_factor")?.as_u64())
            .unwrap_or(1) as u32;
        planned.push((c.clone(), r, rf));
    }
    let mut steps = vec![];
    for (c, r, rf) in &planned {
        steps.extend(plan(c, r, *rf, req, &mut load).map_err(Error::Refused)?);
    }
    progress.update(|t| {
        t.shards_total = steps.len() as u32;
        t.node_name = node.name.clone();
    });
    for step in &steps {
        tracing::info!(step = %step.describe(), "drain");
        run_step(node, step, cancel).await?;
        progress.update(|t| t.shards_done += 1);
    }
    if req.rebalance {
        // From where the replicas are now, the leaving peers emptied.
        let mut all = vec![];
        for (c, _, _) in &planned {
            let mut r = replicas(&q.placement(c).await?);
            for hs in r.values_mut() {
                hs.retain(|(p, _)| !req.leaving.contains(p));
            }
            all.push((c.clone(), r));
        }
        let moves = plan_rebalance(&all, &req.staying);
        progress.update(|t| t.shards_total += moves.len() as u32);
        for step in &moves {
            tracing::info!(step = %step.describe(), "rebalance");
            run_step(node, step, cancel).await?;
            progress.update(|t| t.shards_done += 1);
        }
    }
    for peer in &req.leaving {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        q.remove_peer(*peer).await?;
        tracing::info!(peer, "drain: removed the peer from the cluster");
    }
    Ok(())
}

/// One step, waited for until Qdrant's placement shows it done.
async fn run_step(node: &Node, step: &Step, cancel: &CancellationToken) -> Result<()> {
    let q = &node.qdrant;
    let (collection, shard) = match step {
        Step::Move {
            collection,
            shard,
            from,
            to,
        } => {
            q.cluster_operation(
                collection,
                serde_json::json!({"move_shard": {"shard_id": shard, "from_peer_id": from, "to_peer_id": to}}),
            )
            .await?;
            (collection, *shard)
        }
        Step::Drop {
            collection,
            shard,
            peer,
        } => {
            q.cluster_operation(
                collection,
                serde_json::json!({"drop_replica": {"shard_id": shard, "peer_id": peer}}),
            )
            .await?;
            (collection, *shard)
        }
    };
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let p = q.placement(collection).await?;
        let r = replicas(&p);
        let holders = r.get(&shard).cloned().unwrap_or_default();
        let busy = p.shard_transfers.iter().any(|t| t.shard_id == shard);
        let done = match step {
            Step::Move { from, to, .. } => {
                !busy
                    && holders.iter().any(|(p, s)| p == to && s == "Active")
                    && !holders.iter().any(|(p, _)| p == from)
            }
            Step::Drop { peer, .. } => !holders.iter().any(|(p, _)| p == peer),
        };
        if done {
            return Ok(());
        }
        if !busy
            && let Step::Move { from, to, .. } = step
            && !holders.iter().any(|(p, _)| p == to)
            && holders.iter().any(|(p, _)| p == from)
        {
            // The transfer ended without the move: Qdrant aborted it.
            return Err(Error::Internal(format!(
                "Qdrant aborted {}; nothing was lost (the replica stays on peer {from}): retry the scale-in",
                step.describe()
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "{} did not finish within {} s",
                step.describe(),
                STEP_TIMEOUT.as_secs()
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = cancel.cancelled() => return Err(Error::Cancelled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(leaving: &[u64], staying: &[u64]) -> DrainRequest {
        DrainRequest {
            leaving: leaving.to_vec(),
            staying: staying.to_vec(),
            rebalance: false,
        }
    }

    #[test]
    fn a_rebalance_gives_a_new_node_its_share_one_move_at_a_time() {
        // Two collections grown on peers 1 and 2; peer 3 just joined.
        let docs = shards(&[
            (0, &[(1, "Active"), (2, "Active")]),
            (1, &[(1, "Active"), (2, "Active")]),
            (2, &[(1, "Active"), (2, "Active")]),
        ]);
        let logs = shards(&[
            (0, &[(1, "Active")]),
            (1, &[(2, "Active")]),
            (2, &[(1, "Active")]),
        ]);
        let all = vec![("docs".to_string(), docs), ("logs".to_string(), logs)];
        let steps = plan_rebalance(&all, &[1, 2, 3]);
        // 9 replicas over 3 peers: 3 each; peer 1 held 5, peer 2 held 4.
        assert_eq!(steps.len(), 3, "{steps:?}");
        let mut load = BTreeMap::from([(1u64, 5i64), (2, 4), (3, 0)]);
        for s in &steps {
            let Step::Move { from, to, .. } = s else {
                panic!("{s:?}")
            };
            assert_eq!(*to, 3);
            *load.get_mut(from).unwrap() -= 1;
            *load.get_mut(to).unwrap() += 1;
        }
        assert_eq!(load, BTreeMap::from([(1, 3), (2, 3), (3, 3)]));
        // Never two replicas of a shard on one peer.
        let moved: Vec<(&str, u32)> = steps
            .iter()
            .map(|s| match s {
                Step::Move {
                    collection, shard, ..
                } => (collection.as_str(), *shard),
                Step::Drop { .. } => unreachable!(),
            })
            .collect();
        let mut unique = moved.clone();
        unique.dedup();
        assert_eq!(unique.len(), moved.len());
        // A balanced cluster moves nothing.
        let even = vec![(
            "logs".to_string(),
            shards(&[(0, &[(1, "Active")]), (1, &[(2, "Active")])]),
        )];
        assert!(plan_rebalance(&even, &[1, 2]).is_empty());
    }

    fn shards(list: &[(u32, &[(u64, &str)])]) -> Replicas {
        list.iter()
            .map(|(s, h)| (*s, h.iter().map(|(p, st)| (*p, st.to_string())).collect()))
            .collect()
    }

    #[test]
    fn a_single_replica_moves_to_the_least_loaded_staying_peer() {
        // Three shards, one per peer; peer 3 leaves.
        let r = shards(&[
            (0, &[(1, "Active")]),
            (1, &[(2, "Active")]),
            (2, &[(3, "Active")]),
        ]);
        let mut load = BTreeMap::from([(1, 1), (2, 0)]);
        let steps = plan("docs", &r, 1, &req(&[3], &[1, 2]), &mut load).unwrap();
        assert_eq!(
            steps,
            [Step::Move {
                collection: "docs".into(),
                shard: 2,
                from: 3,
                to: 2
            }]
        );
        assert_eq!(load[&2], 1);
    }

    #[test]
    fn a_shard_held_by_a_staying_peer_keeps_its_replication_factor() {
        // Replication 2 on 3 peers; peer 3 leaves: shard 0 (on 1 and 3)
        // gets a replica on 2; shard 1 (on 2 and 3) one on 1.
        let r = shards(&[
            (0, &[(1, "Active"), (3, "Active")]),
            (1, &[(2, "Active"), (3, "Active")]),
            (2, &[(1, "Active"), (2, "Active")]),
        ]);
        let mut load = BTreeMap::from([(1, 2), (2, 2)]);
        let steps = plan("docs", &r, 2, &req(&[3], &[1, 2]), &mut load).unwrap();
        assert_eq!(
            steps,
            [
                Step::Move {
                    collection: "docs".into(),
                    shard: 0,
                    from: 3,
                    to: 2
                },
                Step::Move {
                    collection: "docs".into(),
                    shard: 1,
                    from: 3,
                    to: 1
                },
            ]
        );
        // Replication 1 where a staying peer holds a copy already: drop.
        let r = shards(&[(0, &[(1, "Active"), (3, "Active")])]);
        let steps = plan("docs", &r, 1, &req(&[3], &[1, 2]), &mut BTreeMap::new()).unwrap();
        assert_eq!(
            steps,
            [Step::Drop {
                collection: "docs".into(),
                shard: 0,
                peer: 3
            }]
        );
    }

    #[test]
    fn what_cannot_be_done_is_refused_before_anything_moves() {
        let r = shards(&[(0, &[(1, "Active"), (2, "Active"), (3, "Active")])]);
        let e = plan("docs", &r, 3, &req(&[3], &[1, 2]), &mut BTreeMap::new()).unwrap_err();
        assert!(
            e.contains("replication factor 3, more than the 2 nodes"),
            "{e}"
        );
        assert!(e.contains("\"replication_factor\": 2"), "{e}");
        // The only replica is not Active: nothing to copy from.
        let r = shards(&[(0, &[(3, "Dead")])]);
        let e = plan("docs", &r, 1, &req(&[3], &[1, 2]), &mut BTreeMap::new()).unwrap_err();
        assert!(e.contains("no Active replica"), "{e}");
        // Nothing on the leaving peers: nothing to do.
        let r = shards(&[(0, &[(1, "Active")])]);
        assert_eq!(
            plan("docs", &r, 3, &req(&[3], &[1, 2]), &mut BTreeMap::new()).unwrap(),
            []
        );
    }

    #[test]
    fn two_leaving_peers_spread_their_shards_over_those_that_stay() {
        // Six shards on peers 1..=4 (rf 1); 3 and 4 leave.
        let r = shards(&[
            (0, &[(1, "Active")]),
            (1, &[(2, "Active")]),
            (2, &[(3, "Active")]),
            (3, &[(4, "Active")]),
            (4, &[(3, "Active")]),
            (5, &[(4, "Active")]),
        ]);
        let mut load = BTreeMap::from([(1, 1), (2, 1)]);
        let steps = plan("docs", &r, 1, &req(&[3, 4], &[1, 2]), &mut load).unwrap();
        assert_eq!(steps.len(), 4);
        assert_eq!(load, BTreeMap::from([(1, 3), (2, 3)]));
    }
}
