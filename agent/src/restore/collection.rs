//! One collection's restore: created from its saved config (or released
//! from a failed attempt), its shard keys and aliases, and the waits for its
//! shards to be active and the collection green.

use super::*;

#[allow(clippy::too_many_arguments)]
/// What every collection of one restore shares.
pub(super) struct Collection<'a> {
    pub(super) node: &'a Node,
    pub(super) store: &'a Arc<dyn ObjectStore>,
    pub(super) root: &'a str,
    pub(super) req: &'a RestoreRequest,
    pub(super) progress: &'a Progress,
    pub(super) cancel: &'a CancellationToken,
    /// The collections this restore created, for the rollback.
    pub(super) created: &'a std::sync::Mutex<Vec<String>>,
    /// Objects in flight into Qdrant, across collections.
    pub(super) uploads: &'a tokio::sync::Semaphore,
}

pub(super) async fn restore_collection(
    cx: &Collection<'_>,
    entry: &CollectionEntry,
    name: &str,
    objects: &[&ObjectEntry],
) -> Result<()> {
    let Collection {
        node, req, cancel, ..
    } = *cx;
    let q = &node.qdrant;
    let mut shard_map: HashMap<u32, u32> = objects
        .iter()
        .filter_map(|o| o.shard_id)
        .map(|s| (s, s))
        .collect();
    if req.create_collections && req.stage.creates() {
        // Another restore may have created it since the check above: 409,
        // and this restore touches nothing of it.
        q.create_collection(name, &create_body(&entry.config, &req.owner)?)
            .await
            .map_err(|e| match e {
                Error::Qdrant { status: 409, .. } => req.exists(name),
                e => e,
            })?;
        cx.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_string());
        cx.progress
            .update(|t| t.created_collections.push(name.to_string()));
        if manifest::custom_sharded(&entry.config) {
            shard_map = create_shard_keys(node, name, entry).await?;
        }
        if req.stage == Stage::Create {
            // The next stage plans uploads on Active replicas: a replica
            // Qdrant is still initializing would have none to go to.
            wait_green(node, name, req.green_timeout, cancel).await?;
        }
    }
    if req.stage.uploads() {
        upload_objects(cx, name, objects, &shard_map).await?;
    }
    if req.stage.finishes() {
        if req.restore_aliases {
            restore_aliases(node, &entry.aliases, name).await?;
        }
        wait_green(node, name, req.green_timeout, cancel).await?;
        release(node, name, &req.owner).await?;
    }
    Ok(())
}

/// The body that creates a collection from its saved config, marked as
/// this owner's (a marker the backup may hold from its own restore is
/// dropped).
pub(super) fn create_body(config: &serde_json::Value, owner: &str) -> Result<serde_json::Value> {
    let mut body = create_body_from_config(config)?;
    if let Some(m) = body.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove(OWNER_KEY);
    }
    if !owner.is_empty() {
        let Some(b) = body.as_object_mut() else {
            return Ok(body);
        };
        let m = b.entry("metadata").or_insert_with(|| serde_json::json!({}));
        if !m.is_object() {
            *m = serde_json::json!({});
        }
        if let Some(m) = m.as_object_mut() {
            m.insert(OWNER_KEY.into(), owner.into());
        }
    }
    Ok(body)
}

/// The restore is done: the collection is no longer this owner's to roll
/// back, so its marker goes.
pub(super) async fn release(node: &Node, name: &str, owner: &str) -> Result<()> {
    if owner.is_empty() {
        return Ok(());
    }
    let info = node.qdrant.collection(name).await?;
    if info.as_ref().and_then(owner_of) == Some(owner) {
        node.qdrant
            .patch_metadata(name, serde_json::json!({ OWNER_KEY: null }))
            .await?;
    }
    Ok(())
}

/// Re-creates the backup's aliases for `name`. An alias that already points
/// at another collection is live traffic's: it is left alone, with a warning.
pub(super) async fn restore_aliases(node: &Node, aliases: &[String], name: &str) -> Result<()> {
    if aliases.is_empty() {
        return Ok(());
    }
    let existing = node.qdrant.aliases().await?;
    for a in aliases {
        match existing.iter().find(|e| &e.alias_name == a) {
            Some(e) if e.collection_name == name => {}
            Some(e) => {
                tracing::warn!(alias = %a, points_to = %e.collection_name, restored = name, "alias exists and points elsewhere; left unchanged")
            }
            None => node.qdrant.create_alias(a, name).await?,
        }
    }
    Ok(())
}

/// Custom-sharded collections need their shard keys before their shards.
/// Keys are created in the order of their first shard id, and each backed-up
/// shard is mapped to the new shard of the same key in the same position.
pub(super) async fn create_shard_keys(
    node: &Node,
    name: &str,
    entry: &CollectionEntry,
) -> Result<HashMap<u32, u32>> {
    let mut by_key: BTreeMap<u32, (Value, Vec<u32>)> = BTreeMap::new();
    let mut firsts: HashMap<String, u32> = HashMap::new();
    for o in &entry.objects {
        if let (Some(id), Some(k)) = (o.shard_id, &o.shard_key) {
            let first = *firsts.entry(k.to_string()).or_insert(id);
            let slot = by_key.entry(first).or_insert_with(|| (k.clone(), vec![]));
            slot.1.push(id);
        }
    }
    for (k, _) in by_key.values() {
        node.qdrant.create_shard_key(name, k).await?;
    }
    let placement = node.qdrant.placement(name).await?;
    let mut map = HashMap::new();
    for (k, old) in by_key.values_mut() {
        let mut new: Vec<u32> = placement
            .local_shards
            .iter()
            .filter(|s| s.shard_key.as_ref() == Some(&*k))
            .map(|s| s.shard_id)
            .collect();
        old.sort();
        new.sort();
        for (o, n) in old.iter().zip(new) {
            map.insert(*o, n);
        }
    }
    Ok(map)
}

/// Whether every replica of every shard is Active: after a shard upload,
/// Qdrant copies it to the other replicas, which pass through Partial.
/// The replicas of collection `name` that are not Active, as
/// "shard 2 on peer 7: Initializing".
pub(super) async fn not_active(node: &Node, name: &str) -> Result<Vec<String>> {
    let p = node.qdrant.placement(name).await?;
    let local = p
        .local_shards
        .iter()
        .map(|s| (s.shard_id, p.peer_id, &s.state));
    let remote = p
        .remote_shards
        .iter()
        .map(|s| (s.shard_id, s.peer_id, &s.state));
    Ok(local
        .chain(remote)
        .filter(|(_, _, state)| *state != "Active")
        .map(|(shard, peer, state)| format!("shard {shard} on peer {peer}: {state}"))
        .collect())
}

/// After a shard upload with `priority=snapshot`, Qdrant marks the other
/// replicas that were Active as Dead through a consensus proposal it does
/// not wait for, then syncs them from the restored one. Until then they
/// still say Active, with their old (empty) data: wait until each has left
/// Active or is receiving a transfer, so a later "every replica Active"
/// means synced.
pub(super) async fn wait_sync_started(
    node: &Node,
    name: &str,
    shard: u32,
    others: &[u64],
    cancel: &CancellationToken,
) -> Result<()> {
    let mut pending: Vec<u64> = others.to_vec();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        let p = node.qdrant.placement(name).await?;
        pending.retain(|peer| {
            let syncing = p
                .shard_transfers
                .iter()
                .any(|t| t.shard_id == shard && t.to == *peer);
            let active = p
                .remote_shards
                .iter()
                .any(|r| r.shard_id == shard && r.peer_id == *peer && r.state == "Active");
            active && !syncing
        });
        if pending.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "the other replicas of shard {shard} of {name} (peers {pending:?}) did not start syncing from the restored one within 60s"
            )));
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    Ok(())
}

pub(super) async fn wait_green(
    node: &Node,
    name: &str,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<()> {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut said = started;
    let mut delay = Duration::from_millis(100);
    loop {
        let status = node
            .qdrant
            .collection(name)
            .await?
            .and_then(|v| v.get("status").and_then(Value::as_str).map(str::to_string));
        match status.as_deref() {
            // Grey: optimizations pending until the next update (common after
            // a restart, and so in a restore of such a collection). Every point
            // is there; waiting for green would wait forever.
            Some("green" | "grey") => {
                let waiting = not_active(node, name).await?;
                if waiting.is_empty() {
                    return Ok(());
                }
                // What a long wait waits for, in the log every 30 s.
                if said.elapsed() >= Duration::from_secs(30) {
                    said = tokio::time::Instant::now();
                    tracing::info!(collection = %name, waited_s = started.elapsed().as_secs(), replicas = %waiting.join(", "), "waiting for every replica to be Active");
                }
            }
            Some("red") => {
                return Err(Error::Qdrant {
                    what: format!("collection {name} after restore"),
                    status: 200,
                    detail: "collection status is red".into(),
                });
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "collection {name} did not turn green (or grey) with every replica Active within {}s (status {status:?})",
                timeout.as_secs()
            )));
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
