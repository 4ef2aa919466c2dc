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

/// Why an operation cannot go on now.
#[derive(Debug)]
pub enum Halt {
    /// Waiting can help (a Secret or an agent may appear): stay, retry later.
    Wait {
        reason: &'static str,
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
    pub fn wait(reason: &'static str, message: impl Into<String>) -> Self {
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
            Halt::Wait { reason, message } => Halt::fail(reason, message),
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
