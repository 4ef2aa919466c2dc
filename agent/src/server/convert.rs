//! Proto <-> domain: task requests into the backup and restore modules'
//! requests (with the shared defaults), Qdrant placement into the proto,
//! and agent errors into gRPC statuses with their reason.

use crate::backup::{BackupRequest, Mode};
use crate::defaults;
use crate::error::Error;
use crate::restore::{self, RestoreRequest};
use crate::store::Location;
use crate::upload::UploadOptions;
use qdrant_agent_proto::v1::*;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tonic::Status;

pub fn selections(c: &[CollectionSelection]) -> Vec<(String, Vec<u32>)> {
    c.iter()
        .map(|s| (s.collection.clone(), s.shard_ids.clone()))
        .collect()
}

/// A StartBackup request as the backup module takes it; zero means the
/// default, and sizes are capped.
pub fn backup_request(r: &StartBackupRequest) -> BackupRequest {
    let or = |v: u64, default: u64, max: u64| if v == 0 { default } else { v.min(max) };
    BackupRequest {
        backup_name: r.backup_name.clone(),
        collections: selections(&r.collections),
        mode: match r.mode() {
            BackupMode::File => Mode::File,
            BackupMode::Auto => Mode::Auto,
            BackupMode::ShardFile => Mode::ShardFile,
            _ => Mode::Stream,
        },
        upload: UploadOptions {
            part_size: or(r.part_size, defaults::PART_SIZE, crate::keys::MAX_PART_SIZE),
            concurrency: or(r.concurrency.into(), defaults::CONCURRENCY as u64, 64) as usize,
            ..Default::default()
        },
        shard_concurrency: or(
            r.shard_concurrency.into(),
            defaults::SHARD_CONCURRENCY as u64,
            16,
        ) as usize,
        write_manifest: !r.skip_manifest,
        owner: r.owner.clone(),
    }
}

/// A StartRestore request as the restore module takes it.
pub fn restore_request(r: &StartRestoreRequest) -> RestoreRequest {
    let green = match r.green_timeout_seconds {
        0 => defaults::GREEN_TIMEOUT,
        s => Duration::from_secs(s.into()),
    };
    RestoreRequest {
        backup_name: r.backup_name.clone(),
        collections: selections(&r.collections),
        rename: r.rename.clone().into_iter().collect(),
        verify_first: !r.skip_verify,
        create_collections: !r.skip_create_collections,
        restore_aliases: !r.skip_aliases,
        green_timeout: green,
        concurrency: defaults::RESTORE_CONCURRENCY,
        stage: match r.stage() {
            RestoreStage::Unspecified => restore::Stage::All,
            RestoreStage::Create => restore::Stage::Create,
            RestoreStage::Upload => restore::Stage::Upload,
            RestoreStage::Finish => restore::Stage::Finish,
            RestoreStage::Rollback => restore::Stage::Rollback,
        },
        owner: r.owner.clone(),
        from_cli: false,
    }
}

/// A request's identity without its credentials.
pub fn fingerprint(storage: Option<&StorageTarget>, rest: &impl prost::Message) -> String {
    let mut h = Sha256::new();
    if let Some(s) = storage {
        let mut s = s.clone();
        s.credentials = None;
        h.update(prost::Message::encode_to_vec(&s));
    }
    h.update(rest.encode_to_vec());
    hex::encode(h.finalize())
}

/// Every shard's replicas, local and remote, sorted by shard id.
pub fn shard_placements(p: &crate::qdrant::Placement) -> Vec<ShardPlacement> {
    let mut shards: std::collections::BTreeMap<u32, ShardPlacement> = Default::default();
    let key_json =
        |k: &Option<serde_json::Value>| k.as_ref().map(|k| k.to_string()).unwrap_or_default();
    let mut add = |id: u32, key: &Option<serde_json::Value>, peer_id: u64, state: &str| {
        let s = shards.entry(id).or_insert_with(|| ShardPlacement {
            shard_id: id,
            replicas: vec![],
            shard_key_json: key_json(key),
        });
        s.replicas.push(ReplicaPlacement {
            peer_id,
            state: state.to_string(),
        });
    };
    for l in &p.local_shards {
        add(l.shard_id, &l.shard_key, p.peer_id, &l.state);
    }
    for r in &p.remote_shards {
        add(r.shard_id, &r.shard_key, r.peer_id, &r.state);
    }
    shards.into_values().collect()
}

/// An agent error as a gRPC status: the code says what kind of problem it
/// is, the message (never holding a credential) what happened, and the
/// `ErrorInfo` detail its reason.
pub fn to_status(e: Error) -> Status {
    let reason = e.reason();
    use tonic::Code;
    let code = match reason {
        "InvalidRequest" => Code::InvalidArgument,
        "ManifestMissing" | "ObjectNotFound" | "S3BucketNotFound" | "QdrantNotFound" => {
            Code::NotFound
        }
        "S3AccessDenied" | "QdrantForbidden" => Code::PermissionDenied,
        "QdrantUnauthorized" => Code::Unauthenticated,
        "BackupExists" => Code::AlreadyExists,
        "BackupNotOwned" => Code::FailedPrecondition,
        "S3Unreachable" | "S3Unavailable" | "QdrantUnreachable" => Code::Unavailable,
        "ChecksumMismatch" | "VersionMismatch" | "BackupIncomplete" | "ManifestTooLarge"
        | "ScaleInRefused" => Code::FailedPrecondition,
        _ => Code::Internal,
    };
    qdrant_agent_proto::errors::status(code, e.to_string(), reason)
}

/// Input errors are answered at once rather than as a failed task.
/// A directory target (`file://`) would let a caller fill or delete the
/// node's own disks: over gRPC it is refused unless `serve` was started
/// with `--allow-local-targets`.
pub fn check_input(
    backup_name: &str,
    storage: Option<&StorageTarget>,
    allow_local: bool,
) -> Result<(), Status> {
    crate::keys::validate_segment("backup", backup_name).map_err(to_status)?;
    let url = storage.map(|s| s.url.as_str()).unwrap_or_default();
    let loc = Location::parse(url).map_err(to_status)?;
    if matches!(loc, Location::Local { .. }) && !allow_local {
        return Err(to_status(Error::Invalid(
            "local directory targets (file://) are refused over gRPC; use an object store, or start the agent with --allow-local-targets".into(),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_request_gets_the_same_defaults_as_the_command_line() {
        let b = backup_request(&StartBackupRequest::default());
        let o = UploadOptions::default();
        assert_eq!(
            (
                b.upload.part_size,
                b.upload.concurrency,
                b.upload.read_timeout
            ),
            (o.part_size, o.concurrency, o.read_timeout)
        );
        assert_eq!(b.shard_concurrency, defaults::SHARD_CONCURRENCY);
        let huge = backup_request(&StartBackupRequest {
            part_size: u64::MAX,
            concurrency: 1000,
            ..Default::default()
        });
        assert_eq!(huge.upload.part_size, crate::keys::MAX_PART_SIZE);
        assert_eq!(huge.upload.concurrency, 64);
        let r = restore_request(&StartRestoreRequest::default());
        assert_eq!(r.green_timeout, defaults::GREEN_TIMEOUT);
        assert!(r.verify_first && r.create_collections && r.restore_aliases);
    }

    #[test]
    fn errors_carry_their_reason_and_a_fitting_code() {
        let s = to_status(Error::Invalid("bad name".into()));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            qdrant_agent_proto::errors::reason(&s).as_deref(),
            Some("InvalidRequest")
        );
        assert!(s.message().ends_with("bad name"), "{}", s.message());
    }
}
