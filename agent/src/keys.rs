//! Names and object keys built from user or Qdrant input, validated before
//! they reach a path or a key, and the pure functions that lay out a backup.

use crate::error::{Error, Result};

pub use qdrant_agent_proto::layout::{
    backup_root, file_rel_key, join, manifest_key, owner_key, shard_rel_key,
};

/// A single path segment: a collection, backup, node or file name.
/// Qdrant allows most characters in collection names; we refuse what could
/// escape a key prefix or a directory, or confuse a terminal or log reader.
pub fn validate_segment(kind: &str, name: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::Invalid(format!("{kind} name {name:?} {why}")));
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > 255 {
        return bad("is longer than 255 bytes");
    }
    if name == "." || name == ".." {
        return bad("is a relative path component");
    }
    if name.contains('/') || name.contains('\\') {
        return bad("contains a path separator");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("contains a control character");
    }
    Ok(())
}

/// A key prefix given by the user: relative, no `..` or empty segments.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        return Ok(());
    }
    for seg in p.split('/') {
        validate_segment("prefix segment", seg)?;
    }
    Ok(())
}

/// A key relative to a backup root as read from a manifest: segments
/// validated, so a tampered manifest cannot point outside the backup.
pub fn validate_rel_key(key: &str) -> Result<()> {
    if key.starts_with('/') {
        return Err(Error::Invalid(format!("object key {key:?} is absolute")));
    }
    for seg in key.split('/') {
        validate_segment("object key segment", seg)?;
    }
    Ok(())
}

/// S3 allows at most 10,000 parts of at most 5 GiB each.
pub const MAX_PARTS: u32 = 10_000;
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// Size of part `n` (1-based) for an upload of unknown length. The size
/// doubles every 900 parts, so 10,000 parts cover S3's 5 TiB object limit
/// even from the 5 MiB minimum, while uploads up to 900 parts keep the
/// requested size (7 GiB at the 8 MiB default).
pub fn part_size(base: u64, n: u32) -> u64 {
    let base = base.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
    let tier = (n.saturating_sub(1) / 900).min(20);
    base.saturating_mul(1u64 << tier).min(MAX_PART_SIZE)
}

/// How many bytes `parts` parts can hold: used to check the growth schedule.
pub fn capacity(base: u64, parts: u32) -> u64 {
    (1..=parts).map(|n| part_size(base, n)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_documented_format() {
        assert_eq!(
            manifest_key("backups/ns/c1", "nightly"),
            "backups/ns/c1/nightly/manifest.json"
        );
        assert_eq!(manifest_key("", "b"), "b/manifest.json");
        assert_eq!(
            join(&backup_root("p/", "b"), &shard_rel_key("pod-0", "docs", 3)),
            "p/b/pod-0/docs/3.snapshot"
        );
    }

    #[test]
    fn rejects_names_that_escape_or_confuse() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\\b",
            "x\ny",
            "tab\t",
            &"a".repeat(256),
        ] {
            assert!(validate_segment("collection", bad).is_err(), "{bad:?}");
        }
        for good in ["docs", "my-coll_2", "ünïcode", "with space", "a.b"] {
            validate_segment("collection", good).unwrap();
        }
        assert!(validate_prefix("a/../b").is_err());
        assert!(validate_prefix("a//b").is_err());
        validate_prefix("backups/prod").unwrap();
        validate_prefix("").unwrap();
        assert!(validate_rel_key("/etc/passwd").is_err());
        assert!(validate_rel_key("node/../../x").is_err());
        validate_rel_key("node-0/docs/0.snapshot").unwrap();
    }

    #[test]
    fn part_size_never_needs_more_than_10000_parts_for_a_5tib_object() {
        const TIB: u64 = 1024 * 1024 * 1024 * 1024;
        for base in [MIN_PART_SIZE, 8 << 20, 64 << 20] {
            assert!(capacity(base, MAX_PARTS) >= 5 * TIB, "base {base}");
            for n in 1..=MAX_PARTS {
                let s = part_size(base, n);
                assert!((MIN_PART_SIZE..=MAX_PART_SIZE).contains(&s));
            }
        }
        // Small uploads keep the requested size; sizes never shrink.
        assert_eq!(part_size(8 << 20, 1), 8 << 20);
        assert_eq!(part_size(8 << 20, 900), 8 << 20);
        assert_eq!(part_size(8 << 20, 901), 16 << 20);
        assert_eq!(part_size(1, 1), MIN_PART_SIZE);
        let sizes: Vec<u64> = (1..=MAX_PARTS).map(|n| part_size(8 << 20, n)).collect();
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]));
    }
}
