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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionEntry {
    pub name: String,
    /// `GET /collections/{c}` result.config, used to re-create the collection.
    pub config: Value,
    pub aliases: Vec<String>,
    pub objects: Vec<ObjectEntry>,
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

pub async fn write(store: &dyn ObjectStore, prefix: &str, m: &Manifest) -> Result<String> {
    let key = keys::manifest_key(prefix, &m.backup_name);
    let body = serde_json::to_vec_pretty(m).map_err(|e| Error::Internal(e.to_string()))?;
    store.put(&key, body.into()).await?;
    Ok(key)
}

pub async fn read(store: &dyn ObjectStore, prefix: &str, backup: &str) -> Result<Manifest> {
    keys::validate_segment("backup", backup)?;
    let key = keys::manifest_key(prefix, backup);
    if store.head(&key).await?.is_none() {
        return Err(Error::ManifestMissing(backup.to_string()));
    }
    let body = get_all(store, &key).await?;
    let m: Manifest = serde_json::from_slice(&body)
        .map_err(|e| Error::Invalid(format!("{key} is not a valid manifest: {e}")))?;
    m.validate()?;
    Ok(m)
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
