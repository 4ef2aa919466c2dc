//! The agent's one error type. Every variant maps to a stable `reason()`
//! that callers (the controller, the CLI) surface as a condition reason.
//! Messages never carry credentials: S3 errors are reduced to their code
//! and message, and URLs are rendered without userinfo.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("Qdrant is unreachable at {url}: {detail}")]
    QdrantUnreachable { url: String, detail: String },
    #[error("Qdrant answered {status} to {what}: {detail}")]
    Qdrant {
        what: String,
        status: u16,
        detail: String,
    },
    /// Qdrant took the key but it does not allow `what` (the read-only key,
    /// or a JWT without global manage access).
    #[error(
        "Qdrant refused {what} with this API key ({detail}): backups and restores need Qdrant's full-access key (service.api_key), not the read-only one (service.read_only_api_key), or a JWT granting global manage access ({{\"access\": \"m\"}})"
    )]
    QdrantForbidden { what: String, detail: String },
    /// Qdrant does not take the key given (or none was given).
    #[error(
        "Qdrant rejected the API key for {what} ({detail}): give the agent Qdrant's service.api_key"
    )]
    QdrantUnauthorized { what: String, detail: String },
    /// Qdrant answered, but a peer it needed for the request is down.
    #[error(
        "Qdrant could not reach {peer} for {what}: start that node (or wait until it is back), then retry; {detail}"
    )]
    QdrantPeerUnavailable {
        what: String,
        peer: String,
        detail: String,
    },
    #[error("object store: {op} {key}: {detail}")]
    Store {
        op: &'static str,
        key: String,
        detail: String,
        reason: &'static str,
    },
    #[error("object store operation not supported: {0}")]
    Unsupported(&'static str),
    #[error("backup {0} has no manifest.json: it is incomplete or does not exist")]
    ManifestMissing(String),
    /// Nothing at all under the backup's name; says what is there instead.
    #[error("{0}")]
    ManifestNotFound(String),
    /// A manifest larger than any backup this agent writes: refused before
    /// it is read into memory.
    #[error("{0}")]
    ManifestTooLarge(String),
    #[error("checksum mismatch for {key}: manifest says {expected}, object has {actual}")]
    ChecksumMismatch {
        key: String,
        expected: String,
        actual: String,
    },
    #[error(
        "Qdrant version mismatch: backup was taken on {backup}, target runs {target}; snapshots restore only into the same minor version"
    )]
    VersionMismatch { backup: String, target: String },
    #[error("snapshot stream stalled: {0}")]
    Stalled(String),
    /// The backup name is taken: complete already, or claimed by another
    /// writer. Nothing was touched.
    #[error("{0}")]
    Exists(String),
    /// The backup lacks part of what it claims to hold.
    #[error("{0}")]
    Incomplete(String),
    /// A delete or commit of a backup another writer owns. Nothing was touched.
    #[error("{0}")]
    NotOwned(String),
    /// A scale-in that cannot be done as asked; nothing was moved.
    #[error("{0}")]
    Refused(String),
    #[error("cancelled")]
    Cancelled,
    /// A task cancelled from outside (Ctrl-C, CancelTask), saying what was
    /// cleaned up.
    #[error("{0}")]
    Interrupted(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("local I/O on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// A stable CamelCase reason for status conditions and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "InvalidRequest",
            Error::Exists(_) => "BackupExists",
            Error::NotOwned(_) => "BackupNotOwned",
            Error::Incomplete(_) => "BackupIncomplete",
            Error::QdrantUnreachable { .. } => "QdrantUnreachable",
            Error::Qdrant { status: 404, .. } => "QdrantNotFound",
            Error::QdrantPeerUnavailable { .. } => "QdrantPeerUnavailable",
            Error::QdrantForbidden { .. } => "QdrantForbidden",
            Error::QdrantUnauthorized { .. } => "QdrantUnauthorized",
            Error::Qdrant { .. } => "QdrantError",
            Error::Store { reason, .. } => reason,
            Error::Unsupported(_) => "StoreUnsupported",
            Error::ManifestMissing(_) | Error::ManifestNotFound(_) => "ManifestMissing",
            Error::ManifestTooLarge(_) => "ManifestTooLarge",
            Error::ChecksumMismatch { .. } => "ChecksumMismatch",
            Error::VersionMismatch { .. } => "VersionMismatch",
            Error::Stalled(_) => "StreamStalled",
            Error::Refused(_) => "ScaleInRefused",
            Error::Cancelled | Error::Interrupted(_) => "Cancelled",
            Error::Timeout(_) => "Timeout",
            Error::Io { .. } => "LocalIo",
            Error::Internal(_) => "Internal",
        }
    }

    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
