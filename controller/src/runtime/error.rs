//! The reconcilers' error (what makes a reconcile retry with backoff) and
//! [`Halt`] (why a backup or restore cannot go on: wait, or fail it).

/// A reconcile that failed; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// Cleanup cannot finish yet (e.g. no agent answers to delete objects).
    #[error("{0}")]
    Retry(String),
    /// An object of the name the operator would write exists and belongs to
    /// someone else: it is never taken over.
    #[error("{0}")]
    NotOurs(String),
}

impl Error {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::Pki(_) => "Certificate",
            Error::Retry(_) => "CleanupPending",
            Error::NotOurs(_) => "ObjectNotOwned",
        }
    }
}

/// Why a backup or restore waits. Written as its name (the reason of the
/// Ready condition); whether a watch ends it decides how long it sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    ClusterNotFound,
    ClusterNotReady,
    AgentMissing,
    AgentUnreachable,
    AgentTokenMissing,
    SecretNotFound,
    WaitingForBackup,
    WaitingForRestore,
    BackupNotComplete,
    StorageUnavailable,
    CommitRetrying,
}

impl Wait {
    pub const ALL: [Wait; 11] = [
        Wait::ClusterNotFound,
        Wait::ClusterNotReady,
        Wait::AgentMissing,
        Wait::AgentUnreachable,
        Wait::AgentTokenMissing,
        Wait::SecretNotFound,
        Wait::WaitingForBackup,
        Wait::WaitingForRestore,
        Wait::BackupNotComplete,
        Wait::StorageUnavailable,
        Wait::CommitRetrying,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Wait::ClusterNotFound => "ClusterNotFound",
            Wait::ClusterNotReady => "ClusterNotReady",
            Wait::AgentMissing => "AgentMissing",
            Wait::AgentUnreachable => "AgentUnreachable",
            Wait::AgentTokenMissing => "AgentTokenMissing",
            Wait::SecretNotFound => "SecretNotFound",
            Wait::WaitingForBackup => "WaitingForBackup",
            Wait::WaitingForRestore => "WaitingForRestore",
            Wait::BackupNotComplete => "BackupNotComplete",
            Wait::StorageUnavailable => "StorageUnavailable",
            Wait::CommitRetrying => "CommitRetrying",
        }
    }

    /// The wait a written reason names.
    pub fn parse(reason: &str) -> Option<Wait> {
        Wait::ALL.into_iter().find(|w| w.as_str() == reason)
    }

    /// A watch ends it (the cluster, its pods or StatefulSet, a Secret, a
    /// QdrantBackup changing), so it sleeps long between looks; the others
    /// (an agent or a store out of reach) are looked at with backoff.
    pub const fn watched(self) -> bool {
        matches!(
            self,
            Wait::ClusterNotFound
                | Wait::AgentMissing
                | Wait::ClusterNotReady
                | Wait::WaitingForBackup
                | Wait::SecretNotFound
                | Wait::AgentTokenMissing
                | Wait::BackupNotComplete
        )
    }

    /// A change of a Secret may end it.
    pub const fn on_secret(self) -> bool {
        matches!(self, Wait::SecretNotFound | Wait::AgentTokenMissing)
    }
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an operation cannot go on now.
#[derive(Debug)]
pub enum Halt {
    /// Waiting can help (a Secret or an agent may appear): stay, retry later.
    Wait {
        reason: Wait,
        message: String,
    },
    /// It cannot succeed: end as Failed.
    Fail {
        reason: String,
        message: String,
    },
    Kube(kube::Error),
}

impl From<kube::Error> for Halt {
    fn from(e: kube::Error) -> Self {
        Halt::Kube(e)
    }
}

impl Halt {
    pub fn wait(reason: Wait, message: impl Into<String>) -> Self {
        Halt::Wait {
            reason,
            message: message.into(),
        }
    }

    pub fn fail(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Halt::Fail {
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// Once an operation has started, waiting is no longer an option.
    pub fn into_fail(self) -> Self {
        match self {
            Halt::Wait { reason, message } => Halt::fail(reason.as_str(), message),
            other => other,
        }
    }

    /// Before an operation starts a wait may help; after, it fails it.
    pub fn once(self, started: bool) -> Self {
        if started { self.into_fail() } else { self }
    }

    /// The message alone, for a cleanup that reports rather than decides.
    pub fn text(self) -> String {
        match self {
            Halt::Wait { message, .. } | Halt::Fail { message, .. } => message,
            Halt::Kube(e) => e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Wait;

    #[test]
    fn every_wait_reads_back_from_its_name() {
        for w in Wait::ALL {
            assert_eq!(Wait::parse(w.as_str()), Some(w));
        }
        assert_eq!(Wait::parse("Completed"), None);
        // What only an agent or a store coming back ends is never left to
        // the five-minute safety net.
        assert!(!Wait::AgentUnreachable.watched() && !Wait::StorageUnavailable.watched());
        assert!(Wait::SecretNotFound.on_secret() && !Wait::ClusterNotReady.on_secret());
    }
}
