//! `manifest.json`: written last, it is the commit point of a backup. A
//! backup without one is incomplete and is never offered for restore.

use crate::error::{Error, Result};
use crate::keys;
use crate::store::{ObjectStore, get_all};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectMode {
    /// A live shard snapshot streamed from `GET .../shards/{s}/snapshot`.
    Stream,
    /// A collection snapshot file written by Qdrant (all of a node's shards).
    File,
}

impl ObjectMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectMode::Stream => "stream",
            ObjectMode::File => "file",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectEntry {
    /// Relative to the backup root, so a backup can be copied elsewhere.
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub mode: ObjectMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_key: Option<Value>,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<u64>,
    pub taken_at: String,
    /// The backup mode that read it: `stream`, `shard-file` or `file`
    /// (`mode` is the object's format, the same for the first two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_with: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionEntry {
    pub name: String,
    /// `GET /collections/{c}` result.config, used to re-create the collection.
    pub config: Value,
    pub aliases: Vec<String>,
    pub objects: Vec<ObjectEntry>,
    /// Where each shard's replicas were when the backup was taken (a backup
    /// driven by the controller records it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<ShardReplicas>,
}

/// Whether a collection config (`GET /collections/{c}` result.config) uses
/// custom sharding (shards created per shard key).
pub fn custom_sharded(config: &Value) -> bool {
    config
        .pointer("/params/sharding_method")
        .and_then(Value::as_str)
        == Some("custom")
}

/// What is missing for `c`'s objects to make the whole collection, if
/// anything: every shard its saved config counts (`shard_number`, per
/// shard key under custom sharding) must have a streamed object. A
/// collection snapshot (file mode) holds a node's shards under no id and is
/// not counted; nor is a config without a shard count.
pub fn missing_shards(c: &CollectionEntry) -> Option<String> {
    if c.objects.iter().any(|o| o.mode != ObjectMode::Stream) {
        return None;
    }
    let n = c.config.pointer("/params/shard_number")?.as_u64()? as usize;
    if custom_sharded(&c.config) {
        let mut per_key: std::collections::BTreeMap<String, std::collections::BTreeSet<u32>> =
            Default::default();
        for o in &c.objects {
            let key = o
                .shard_key
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default();
            per_key.entry(key).or_default().extend(o.shard_id);
        }
        let short: Vec<String> = per_key
            .iter()
            .filter(|(_, ids)| ids.len() < n)
            .map(|(k, ids)| format!("shard key {k} has {} of {n} shards", ids.len()))
            .collect();
        return (!short.is_empty()).then(|| short.join(", "));
    }
    let have: std::collections::BTreeSet<u32> =
        c.objects.iter().filter_map(|o| o.shard_id).collect();
    let missing: Vec<String> = (0..n as u32)
        .filter(|s| !have.contains(s))
        .map(|s| s.to_string())
        .collect();
    (!missing.is_empty()).then(|| format!("shards {} of its {n} are missing", missing.join(", ")))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardReplicas {
    pub shard_id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_key: Option<Value>,
    pub replicas: Vec<ReplicaEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaEntry {
    pub peer_id: u64,
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub backup_name: String,
    pub qdrant_version: String,
    pub agent_version: String,
    pub started_at: String,
    pub completed_at: String,
    pub nodes: Vec<NodeEntry>,
    pub collections: Vec<CollectionEntry>,
}

impl Manifest {
    pub fn total_bytes(&self) -> u64 {
        self.objects().map(|(_, o)| o.size).sum()
    }

    pub fn objects(&self) -> impl Iterator<Item = (&CollectionEntry, &ObjectEntry)> {
        self.collections
            .iter()
            .flat_map(|c| c.objects.iter().map(move |o| (c, o)))
    }

    /// Refuses manifests that could point outside their backup or that a
    /// newer format wrote.
    pub fn validate(&self) -> Result<()> {
        if self.format != FORMAT {
            return Err(Error::Invalid(format!(
                "manifest format {} is not supported (this agent reads {FORMAT})",
                self.format
            )));
        }
        for c in &self.collections {
            keys::validate_segment("collection", &c.name)?;
            for o in &c.objects {
                keys::validate_rel_key(&o.key)?;
                if o.sha256.len() != 64 || !o.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Error::Invalid(format!(
                        "manifest entry {} has no valid sha256",
                        o.key
                    )));
                }
                if o.mode == ObjectMode::Stream && o.shard_id.is_none() {
                    return Err(Error::Invalid(format!(
                        "manifest entry {} lacks its shard id",
                        o.key
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Writes `manifest.json`, the commit point, only if none exists: two
/// writers of one name never overwrite each other's backup.
pub async fn write(store: &dyn ObjectStore, prefix: &str, m: &Manifest) -> Result<String> {
    let key = keys::manifest_key(prefix, &m.backup_name);
    let body = serde_json::to_vec_pretty(m).map_err(|e| Error::Internal(e.to_string()))?;
    if !store.put_new(&key, body.into()).await? {
        return Err(Error::Exists(format!(
            "backup {} was completed by another writer meanwhile ({} exists in {}); this one is not committed",
            m.backup_name,
            key,
            store.describe()
        )));
    }
    Ok(key)
}

/// Claims backup `backup` for `owner` before anything is uploaded: refused
/// (and nothing touched) when the backup is complete already or another
/// owner claimed it. An empty owner claims nothing and only refuses an
/// existing manifest.
pub async fn claim(store: &dyn ObjectStore, prefix: &str, backup: &str, owner: &str) -> Result<()> {
    let root = keys::backup_root(prefix, backup);
    if store
        .head(&keys::manifest_key(prefix, backup))
        .await?
        .is_some()
    {
        return Err(Error::Exists(format!(
            "backup {backup} already exists at {}/{root}; restore it from there, or choose another name",
            store.describe().trim_end_matches('/')
        )));
    }
    if owner.is_empty() {
        return Ok(());
    }
    let key = keys::owner_key(prefix, backup);
    if store
        .put_new(&key, owner.as_bytes().to_vec().into())
        .await?
    {
        return Ok(());
    }
    match owner_of(store, prefix, backup).await? {
        Some(held) if held == owner => Ok(()),
        held => Err(Error::Exists(format!(
            "backup {backup} at {}/{root} is being written by another backup ({}); choose another name",
            store.describe().trim_end_matches('/'),
            held.unwrap_or_default()
        ))),
    }
}

/// Who claimed the backup, if anyone.
pub async fn owner_of(
    store: &dyn ObjectStore,
    prefix: &str,
    backup: &str,
) -> Result<Option<String>> {
    let key = keys::owner_key(prefix, backup);
    if store.head(&key).await?.is_none() {
        return Ok(None);
    }
    let body = get_all(store, &key).await?;
    Ok(Some(String::from_utf8_lossy(&body).trim().to_string()))
}

/// Refuses, touching nothing, when `owner` (if given) did not write the
/// backup: its marker names another owner, or there is no marker but a
/// manifest (a backup from before markers, or written by hand).
async fn check_owner(
    store: &dyn ObjectStore,
    prefix: &str,
    backup: &str,
    owner: &str,
) -> Result<()> {
    if owner.is_empty() {
        return Ok(());
    }
    let held = owner_of(store, prefix, backup).await?;
    let committed = store
        .head(&keys::manifest_key(prefix, backup))
        .await?
        .is_some();
    match held {
        Some(h) if h == owner => Ok(()),
        None if !committed => Ok(()),
        Some(h) => Err(Error::NotOwned(format!(
            "backup {backup} belongs to another writer ({h}); left untouched"
        ))),
        None => Err(Error::NotOwned(format!(
            "backup {backup} has no ownership marker but a manifest: it was not written by this owner; left untouched"
        ))),
    }
}

pub async fn read(store: &dyn ObjectStore, prefix: &str, backup: &str) -> Result<Manifest> {
    keys::validate_segment("backup", backup)?;
    let key = keys::manifest_key(prefix, backup);
    let size = store.head(&key).await?;
    if let Some(size) = size.filter(|s| *s > MAX_MANIFEST_BYTES) {
        return Err(Error::ManifestTooLarge(format!(
            "{key} is {size} bytes, over the {} MiB a manifest may be (one of 100,000 shards takes under 100 MiB): it was not written by this agent; refused unread",
            MAX_MANIFEST_BYTES >> 20
        )));
    }
    if size.is_none() {
        // A HEAD cannot tell a missing bucket from a missing key (no body):
        // a listing can, and says NoSuchBucket when that is the mistake.
        store
            .list(&format!("{}/", keys::backup_root(prefix, backup)))
            .await?;
        return Err(Error::ManifestMissing(backup.to_string()));
    }
    let body = get_all(store, &key).await?;
    let m: Manifest = serde_json::from_slice(&body)
        .map_err(|e| Error::Invalid(format!("{key} is not a valid manifest: {e}")))?;
    m.validate()?;
    Ok(m)
}

/// The largest manifest read: about 100,000 shards' entries. Anything
/// larger did not come from an agent, and is never read into memory.
pub const MAX_MANIFEST_BYTES: u64 = 100 << 20;

/// `m` without its object lists: what a caller that plans a restore needs
/// (collections, configs, aliases, topology), a small fraction of the size.
pub fn summary(m: &Manifest) -> Manifest {
    let mut s = m.clone();
    for c in &mut s.collections {
        c.objects.clear();
    }
    s
}

/// Backup names under `prefix` that have a manifest (complete backups).
pub async fn list_complete(store: &dyn ObjectStore, prefix: &str) -> Result<Vec<String>> {
    let root = if prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", prefix.trim_end_matches('/'))
    };
    let mut names: Vec<String> = store
        .list(&root)
        .await?
        .into_iter()
        .filter_map(|o| {
            let rest = o.key.strip_prefix(&root)?;
            let (name, tail) = rest.split_once('/')?;
            (tail == "manifest.json").then(|| name.to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Where complete backups are below `prefix` (deeper than its own level):
/// each prefix that holds some, with how many, at most `max` of them.
pub async fn prefixes_below(
    store: &dyn ObjectStore,
    prefix: &str,
    max: usize,
) -> Result<Vec<(String, usize)>> {
    let root = if prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", prefix.trim_end_matches('/'))
    };
    let mut at: std::collections::BTreeMap<String, usize> = Default::default();
    for o in store.list(&root).await? {
        let Some(rest) = o.key.strip_prefix(&root) else {
            continue;
        };
        let Some(dir) = rest.strip_suffix("/manifest.json") else {
            continue;
        };
        if let Some((inner, _name)) = dir.rsplit_once('/') {
            *at.entry(format!("{root}{inner}")).or_default() += 1;
        }
    }
    Ok(at.into_iter().take(max).collect())
}

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

/// Checks every object of `m` is in the store with its size, then writes the
/// manifest: the commit point of the backup.
pub async fn commit(
    store: &dyn ObjectStore,
    prefix: &str,
    m: &Manifest,
    owner: &str,
) -> Result<String> {
    check_owner(store, prefix, &m.backup_name, owner).await?;
    let manifest = keys::manifest_key(prefix, &m.backup_name);
    if !owner.is_empty() && store.head(&manifest).await?.is_some() {
        // The owner committed it already: an earlier call whose answer was
        // lost (a timeout, a restarted controller). Committing is idempotent.
        return Ok(manifest);
    }
    let root = keys::backup_root(prefix, &m.backup_name);
    for (_, o) in m.objects() {
        let key = keys::join(&root, &o.key);
        match store.head(&key).await? {
            Some(size) if size == o.size => {}
            Some(size) => {
                return Err(Error::Invalid(format!(
                    "{key} holds {size} bytes, the task reported {}",
                    o.size
                )));
            }
            None => return Err(Error::Invalid(format!("{key} is missing from the store"))),
        }
    }
    // What a lost task (its agent restarted or vanished) left under the
    // backup is not part of it: abort its uploads, delete its objects.
    let dir = format!("{root}/");
    abort_uploads(store, &dir).await?;
    let mut listed: std::collections::HashSet<String> = m
        .objects()
        .map(|(_, o)| keys::join(&root, &o.key))
        .collect();
    listed.insert(keys::owner_key(prefix, &m.backup_name));
    for o in store.list(&dir).await? {
        if !listed.contains(&o.key) {
            tracing::info!(key = %o.key, "removing an object no task of the backup reported");
            store.delete(&o.key).await?;
        }
    }
    write(store, prefix, m).await
}

/// Deletes a backup: the manifest first, then the objects and open uploads.
/// Deletes a backup: the manifest first (so it stops counting as complete),
/// then its objects and open uploads, the ownership marker last. With an
/// `owner`, only a backup that owner wrote (see `check_owner`).
pub async fn delete_backup(
    store: &dyn ObjectStore,
    prefix: &str,
    backup: &str,
    owner: &str,
) -> Result<u32> {
    keys::validate_segment("backup", backup)?;
    check_owner(store, prefix, backup, owner).await?;
    let root = format!("{}/", keys::backup_root(prefix, backup));
    let manifest = keys::manifest_key(prefix, backup);
    let marker = keys::owner_key(prefix, backup);
    store.delete(&manifest).await?;
    let mut n = 1;
    for o in store.list(&root).await? {
        if o.key != marker {
            store.delete(&o.key).await?;
            n += 1;
        }
    }
    abort_uploads(store, &root).await?;
    store.delete(&marker).await?;
    Ok(n)
}

/// Aborts every open multipart upload under `dir` (stores without the
/// listing call have none to abort).
async fn abort_uploads(store: &dyn ObjectStore, dir: &str) -> Result<()> {
    match store.list_multipart(dir).await {
        Ok(ups) => {
            for u in ups {
                store.abort_multipart(&u.key, &u.upload_id).await?;
            }
            Ok(())
        }
        Err(Error::Unsupported(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qdrant_agent_proto::v1::{CollectionInfo, ShardResult, Task, TaskPhase};

    fn task(node: &str, version: &str, shard: u32) -> Task {
        let mut t = Task {
            task_id: format!("t-{node}"),
            backup_name: "b".into(),
            qdrant_version: version.into(),
            node_name: node.into(),
            peer_id: 7,
            collections: vec![CollectionInfo {
                name: "c".into(),
                config_json: "{\"params\":{}}".into(),
                aliases: vec![],
            }],
            results: vec![ShardResult {
                collection: "c".into(),
                shard_id: Some(shard),
                key: format!("{node}/c/{shard}.snapshot"),
                size: 1,
                sha256: "a".repeat(64),
                mode: "stream".into(),
                done: true,
                taken_at: String::new(),
            }],
            ..Default::default()
        };
        t.set_phase(TaskPhase::Succeeded);
        t
    }

    #[test]
    fn nodes_of_one_backup_must_agree_and_have_succeeded() {
        let m = assemble(
            "b",
            "s",
            "e",
            &[task("n1", "1.18.3", 0), task("n2", "1.18.3", 1)],
        )
        .unwrap();
        assert_eq!(m.objects().count(), 2);
        let err = assemble(
            "b",
            "s",
            "e",
            &[task("n1", "1.18.3", 0), task("n2", "1.18.2", 1)],
        )
        .unwrap_err();
        assert!(err.to_string().contains("different Qdrant versions"));
        let mut failed = task("n2", "1.18.3", 1);
        failed.set_phase(TaskPhase::Failed);
        assert!(assemble("b", "s", "e", &[task("n1", "1.18.3", 0), failed]).is_err());
        assert!(assemble("other", "s", "e", &[task("n1", "1.18.3", 0)]).is_err());
        assert!(assemble("b", "s", "e", &[]).is_err());
    }

    #[test]
    fn placement_records_every_node_and_replica_and_gives_objects_their_shard_keys() {
        use qdrant_agent_proto::v1::{
            ClusterNode, CollectionPlacement, ReplicaPlacement, ShardPlacement,
        };
        let mut m = assemble(
            "b",
            "s",
            "e",
            &[task("n1", "1.18.3", 0), task("n2", "1.18.3", 1)],
        )
        .unwrap();
        let replica = |peer_id| ReplicaPlacement {
            peer_id,
            state: "Active".into(),
        };
        let placement = [CollectionPlacement {
            name: "c".into(),
            shards: vec![
                ShardPlacement {
                    shard_id: 0,
                    replicas: vec![replica(7), replica(8)],
                    shard_key_json: "\"eu\"".into(),
                },
                ShardPlacement {
                    shard_id: 1,
                    replicas: vec![replica(8), replica(9)],
                    shard_key_json: "2".into(),
                },
            ],
        }];
        let nodes: Vec<ClusterNode> = ["n1", "n2", "n3"]
            .iter()
            .zip(7..)
            .map(|(n, p)| ClusterNode {
                name: n.to_string(),
                peer_id: p,
            })
            .collect();
        add_placement(&mut m, &placement, &nodes).unwrap();
        let names: Vec<&str> = m.nodes.iter().map(|n| n.node.as_str()).collect();
        assert_eq!(
            names,
            ["n1", "n2", "n3"],
            "the idle node is in the topology"
        );
        let c = &m.collections[0];
        assert_eq!(c.placement.len(), 2);
        assert_eq!(c.placement[1].replicas[1].peer_id, 9);
        let keys: Vec<_> = c.objects.iter().map(|o| o.shard_key.clone()).collect();
        assert_eq!(
            keys,
            [Some(serde_json::json!("eu")), Some(serde_json::json!(2))]
        );
        // The manifest reads back with its placement.
        let back: Manifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    mod ownership {
        use super::super::*;
        use crate::store::LocalStore;

        fn empty(name: &str) -> Manifest {
            Manifest {
                format: 1,
                backup_name: name.into(),
                qdrant_version: "1.18.3".into(),
                agent_version: "0".into(),
                started_at: String::new(),
                completed_at: String::new(),
                nodes: vec![],
                collections: vec![],
            }
        }

        async fn put(s: &LocalStore, key: &str) {
            s.put(key, bytes::Bytes::from_static(b"data"))
                .await
                .unwrap();
        }

        #[tokio::test]
        async fn a_name_is_claimed_once_and_a_complete_backup_is_never_claimed() {
            let dir = tempfile::tempdir().unwrap();
            let s = LocalStore::new(dir.path().into());
            claim(&s, "p", "b", "uid-1").await.unwrap();
            // The same owner again (another pod's task, a retry) is fine.
            claim(&s, "p", "b", "uid-1").await.unwrap();
            let e = claim(&s, "p", "b", "uid-2").await.unwrap_err();
            assert_eq!(e.reason(), "BackupExists");
            assert!(e.to_string().contains("another backup (uid-1)"), "{e}");
            write(&s, "p", &empty("done")).await.unwrap();
            let e = claim(&s, "p", "done", "uid-3").await.unwrap_err();
            assert_eq!(e.reason(), "BackupExists");
            assert!(e.to_string().contains("restore it"), "{e}");
            // manifest.json is written once: a second writer is refused.
            assert_eq!(
                write(&s, "p", &empty("done")).await.unwrap_err().reason(),
                "BackupExists"
            );
        }

        #[tokio::test]
        async fn only_the_owner_deletes_or_commits_and_another_writers_backup_stays_whole() {
            let dir = tempfile::tempdir().unwrap();
            let s = LocalStore::new(dir.path().into());
            claim(&s, "p", "b", "uid-1").await.unwrap();
            put(&s, "p/b/pod-0/docs/0.snapshot").await;
            // A re-applied resource (another UID) must not delete it.
            let e = delete_backup(&s, "p", "b", "uid-2").await.unwrap_err();
            assert_eq!(e.reason(), "BackupNotOwned");
            assert_eq!(s.head("p/b/pod-0/docs/0.snapshot").await.unwrap(), Some(4));
            let e = commit(&s, "p", &empty("b"), "uid-2").await.unwrap_err();
            assert_eq!(e.reason(), "BackupNotOwned");
            // The owner commits: the marker stays with the backup. A retry
            // of a commit whose answer was lost succeeds; another owner's
            // is still refused.
            commit(&s, "p", &empty("b"), "uid-1").await.unwrap();
            commit(&s, "p", &empty("b"), "uid-1").await.unwrap();
            let e = commit(&s, "p", &empty("b"), "uid-2").await.unwrap_err();
            assert_eq!(e.reason(), "BackupNotOwned");
            assert_eq!(
                owner_of(&s, "p", "b").await.unwrap().as_deref(),
                Some("uid-1")
            );
            delete_backup(&s, "p", "b", "uid-1").await.unwrap();
            assert!(s.list("p/b/").await.unwrap().is_empty());

            // A backup from before markers: refused to an owner, deleted
            // on an unconditional request (deletionPolicy Delete).
            write(&s, "p", &empty("old")).await.unwrap();
            put(&s, "p/old/pod-0/docs/0.snapshot").await;
            let e = delete_backup(&s, "p", "old", "uid-1").await.unwrap_err();
            assert_eq!(e.reason(), "BackupNotOwned");
            delete_backup(&s, "p", "old", "").await.unwrap();
            assert!(s.list("p/old/").await.unwrap().is_empty());
        }
    }

    mod completeness {
        use super::super::*;
        use serde_json::json;

        fn object(shard: u32, key: Option<Value>, mode: ObjectMode) -> ObjectEntry {
            ObjectEntry {
                key: format!("n/c/{shard}.snapshot"),
                size: 1,
                sha256: String::new(),
                mode,
                shard_id: Some(shard),
                shard_key: key,
                node: "n".into(),
                peer_id: None,
                taken_at: String::new(),
                taken_with: None,
            }
        }

        fn collection(config: Value, objects: Vec<ObjectEntry>) -> CollectionEntry {
            CollectionEntry {
                name: "c".into(),
                config,
                aliases: vec![],
                objects,
                placement: Default::default(),
            }
        }

        #[test]
        fn every_shard_the_config_counts_must_be_there() {
            let three = json!({"params": {"shard_number": 3}});
            let all = (0..3)
                .map(|s| object(s, None, ObjectMode::Stream))
                .collect();
            assert_eq!(missing_shards(&collection(three.clone(), all)), None);
            let some = vec![
                object(0, None, ObjectMode::Stream),
                object(2, None, ObjectMode::Stream),
            ];
            assert_eq!(
                missing_shards(&collection(three.clone(), some)).as_deref(),
                Some("shards 1 of its 3 are missing")
            );
            assert!(missing_shards(&collection(three, vec![])).is_some());
            // Collection snapshots hold shards under no id: not counted.
            let file = vec![object(0, None, ObjectMode::File)];
            assert_eq!(
                missing_shards(&collection(json!({"params": {"shard_number": 3}}), file)),
                None
            );
        }

        #[test]
        fn under_custom_sharding_each_key_has_all_its_shards() {
            let cfg = json!({"params": {"shard_number": 2, "sharding_method": "custom"}});
            let objects = vec![
                object(0, Some(json!("acme")), ObjectMode::Stream),
                object(1, Some(json!("acme")), ObjectMode::Stream),
                object(2, Some(json!("globex")), ObjectMode::Stream),
            ];
            assert_eq!(
                missing_shards(&collection(cfg, objects)).as_deref(),
                Some("shard key \"globex\" has 1 of 2 shards")
            );
        }
    }
}
