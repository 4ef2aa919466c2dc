//! The layout of a backup in the object store, owned here for the
//! controller and the agent alike: where a cluster's backups go, and the
//! keys of a backup's manifest, ownership marker, shards and files. Pure.
//! (The agent validates every name before it reaches a key: `keys`.)

/// Key prefix of a cluster's backups: `<storage prefix>/<namespace>/<cluster>`,
/// the prefix the operator gives the agents, so a backup made through the
/// operator is where the agent CLI looks for it.
pub fn cluster_prefix(storage_prefix: Option<&str>, namespace: &str, cluster: &str) -> String {
    match storage_prefix
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
    {
        Some(p) => format!("{p}/{namespace}/{cluster}"),
        None => format!("{namespace}/{cluster}"),
    }
}

/// The layout root of a backup: `<prefix>/<backup-name>`.
pub fn backup_root(prefix: &str, backup: &str) -> String {
    join(prefix, backup)
}

pub fn manifest_key(prefix: &str, backup: &str) -> String {
    join(&backup_root(prefix, backup), "manifest.json")
}

/// The ownership marker: who writes the backup, claimed before any upload.
pub fn owner_key(prefix: &str, backup: &str) -> String {
    join(&backup_root(prefix, backup), "owner")
}

/// Key of a streamed shard, relative to the backup root.
pub fn shard_rel_key(node: &str, collection: &str, shard: u32) -> String {
    format!("{node}/{collection}/{shard}.snapshot")
}

/// Key of a collection snapshot file, relative to the backup root.
pub fn file_rel_key(node: &str, collection: &str, file_name: &str) -> String {
    format!("{node}/{collection}/{file_name}")
}

pub fn join(a: &str, b: &str) -> String {
    let a = a.trim_end_matches('/');
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_prefix_matches_the_documented_layout() {
        assert_eq!(cluster_prefix(Some("prod/"), "ns", "q"), "prod/ns/q");
        assert_eq!(cluster_prefix(None, "ns", "q"), "ns/q");
        assert_eq!(cluster_prefix(Some(""), "ns", "q"), "ns/q");
    }

    #[test]
    fn a_backup_is_laid_out_under_its_prefix() {
        assert_eq!(manifest_key("p/ns/q/", "b1"), "p/ns/q/b1/manifest.json");
        assert_eq!(owner_key("", "b1"), "b1/owner");
        assert_eq!(shard_rel_key("n0", "docs", 2), "n0/docs/2.snapshot");
        assert_eq!(
            file_rel_key("n0", "docs", "x.snapshot"),
            "n0/docs/x.snapshot"
        );
    }
}
