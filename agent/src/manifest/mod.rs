//! `manifest.json`: written last, it is the commit point of a backup. A
//! backup without one is incomplete and is never offered for restore.

mod assemble;
mod io;
pub use assemble::*;
pub use io::*;

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

/// `m` without its object lists: what a caller that plans a restore needs
/// (collections, configs, aliases, topology), a small fraction of the size.
pub fn summary(m: &Manifest) -> Manifest {
    let mut s = m.clone();
    for c in &mut s.collections {
        c.objects.clear();
    }
    s
}

#[cfg(test)]
mod tests;
