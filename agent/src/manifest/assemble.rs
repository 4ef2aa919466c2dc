//! Building a manifest from the finished tasks of a backup, and adding the
//! placement of every shard replica the nodes reported. Pure.

use super::*;

/// Builds the manifest of a multi-node backup from its nodes' finished
/// backup tasks: each collection once (config and aliases from any node),
/// every node's objects, the peer ids, and the earliest start.
pub fn assemble(
    backup_name: &str,
    started_at: &str,
    completed_at: &str,
    parts: &[qdrant_agent_proto::v1::Task],
) -> Result<Manifest> {
    use qdrant_agent_proto::v1::TaskPhase;
    keys::validate_segment("backup", backup_name)?;
    if parts.is_empty() {
        return Err(Error::Invalid(
            "a manifest needs at least one node's task".into(),
        ));
    }
    let mut versions: Vec<&str> = parts.iter().map(|t| t.qdrant_version.as_str()).collect();
    versions.sort();
    versions.dedup();
    if versions.len() != 1 || versions[0].is_empty() {
        return Err(Error::Invalid(format!(
            "the nodes report different Qdrant versions: {versions:?}"
        )));
    }
    let mut collections: Vec<CollectionEntry> = Vec::new();
    let mut nodes = Vec::new();
    for t in parts {
        if t.phase() != TaskPhase::Succeeded || t.backup_name != backup_name {
            return Err(Error::Invalid(format!(
                "task {} is not a succeeded part of backup {backup_name}",
                t.task_id
            )));
        }
        keys::validate_segment("node", &t.node_name)?;
        let peer_id = (t.peer_id != 0).then_some(t.peer_id);
        nodes.push(NodeEntry {
            node: t.node_name.clone(),
            peer_id,
        });
        for c in &t.collections {
            if !collections.iter().any(|e| e.name == c.name) {
                let config = serde_json::from_str(&c.config_json)
                    .map_err(|e| Error::Invalid(format!("config of {}: {e}", c.name)))?;
                collections.push(CollectionEntry {
                    name: c.name.clone(),
                    config,
                    aliases: c.aliases.clone(),
                    objects: vec![],
                    placement: vec![],
                });
            }
        }
        for r in &t.results {
            keys::validate_rel_key(&r.key)?;
            let entry = collections
                .iter_mut()
                .find(|e| e.name == r.collection)
                .ok_or_else(|| {
                    Error::Invalid(format!("{} belongs to no collection of the task", r.key))
                })?;
            let mode = match r.mode.as_str() {
                "file" => ObjectMode::File,
                _ => ObjectMode::Stream,
            };
            if mode == ObjectMode::Stream && entry.objects.iter().any(|o| o.shard_id == r.shard_id)
            {
                return Err(Error::Invalid(format!(
                    "shard {:?} of {} was backed up twice",
                    r.shard_id, r.collection
                )));
            }
            entry.objects.push(ObjectEntry {
                key: r.key.clone(),
                size: r.size,
                sha256: r.sha256.clone(),
                mode,
                shard_id: r.shard_id,
                shard_key: None,
                node: t.node_name.clone(),
                peer_id,
                taken_at: r.taken_at.clone(),
                taken_with: (!r.mode.is_empty()).then(|| r.mode.clone()),
            });
        }
    }
    for e in &mut collections {
        e.objects.sort_by(|a, b| a.key.cmp(&b.key));
    }
    collections.sort_by(|a, b| a.name.cmp(&b.name));
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let m = Manifest {
        format: FORMAT,
        backup_name: backup_name.to_string(),
        qdrant_version: versions[0].to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: started_at.to_string(),
        completed_at: completed_at.to_string(),
        nodes,
        collections,
    };
    m.validate()?;
    Ok(m)
}

/// Records the cluster's topology and shard placement in `m`: every node
/// with its peer id, each collection's replicas per shard, and the shard key
/// of each object of a custom-sharded collection.
pub fn add_placement(
    m: &mut Manifest,
    placement: &[qdrant_agent_proto::v1::CollectionPlacement],
    nodes: &[qdrant_agent_proto::v1::ClusterNode],
) -> Result<()> {
    for n in nodes {
        keys::validate_segment("node", &n.name)?;
        if !m.nodes.iter().any(|e| e.node == n.name) {
            m.nodes.push(NodeEntry {
                node: n.name.clone(),
                peer_id: (n.peer_id != 0).then_some(n.peer_id),
            });
        }
    }
    m.nodes.sort_by(|a, b| a.node.cmp(&b.node));
    for p in placement {
        let Some(entry) = m.collections.iter_mut().find(|e| e.name == p.name) else {
            continue;
        };
        entry.placement = p
            .shards
            .iter()
            .map(|s| {
                let shard_key = if s.shard_key_json.is_empty() {
                    None
                } else {
                    Some(serde_json::from_str(&s.shard_key_json).map_err(|e| {
                        Error::Invalid(format!("shard key of {} shard {}: {e}", p.name, s.shard_id))
                    })?)
                };
                Ok(ShardReplicas {
                    shard_id: s.shard_id,
                    shard_key,
                    replicas: s
                        .replicas
                        .iter()
                        .map(|r| ReplicaEntry {
                            peer_id: r.peer_id,
                            state: r.state.clone(),
                        })
                        .collect(),
                })
            })
            .collect::<Result<_>>()?;
        for o in &mut entry.objects {
            if o.shard_key.is_none() {
                o.shard_key = entry
                    .placement
                    .iter()
                    .find(|s| Some(s.shard_id) == o.shard_id)
                    .and_then(|s| s.shard_key.clone());
            }
        }
    }
    Ok(())
}
