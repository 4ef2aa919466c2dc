//! Reading and writing manifests in the store: the ownership claim, the
//! commit (the manifest written last), listing complete backups, deleting one.

use super::*;

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
pub(super) async fn check_owner(
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
pub(super) async fn abort_uploads(store: &dyn ObjectStore, dir: &str) -> Result<()> {
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
