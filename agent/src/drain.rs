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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainRequest {
    /// The peers that leave.
    pub leaving: Vec<u64>,
    /// The peers that stay (the agent's own among them).
    pub staying: Vec<u64>,
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
    if req.staying.is_empty() || req.leaving.is_empty() {
        return Err(Error::Invalid(
            "a drain needs peers that leave and peers that stay".into(),
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
        }
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
