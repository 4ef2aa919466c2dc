//! Generated types and service stubs for `qdrant.agent.v1.Agent`, and the
//! backup layout both sides of it share.

pub mod layout;

pub mod v1 {
    tonic::include_proto!("qdrant.agent.v1");

    /// Requests carrying credentials are logged with `{:?}` here and there:
    /// the key id is shown, the secret and session token never are.
    impl std::fmt::Debug for S3Credentials {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let set = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
            f.debug_struct("S3Credentials")
                .field("access_key_id", &self.access_key_id)
                .field("secret_access_key", &set(&self.secret_access_key))
                .field("session_token", &set(&self.session_token))
                .finish()
        }
    }
}

/// An agent's errors carry a stable, machine-readable reason (e.g.
/// `S3AccessDenied`) as the standard `google.rpc.ErrorInfo` detail, next
/// to a message meant for people: callers branch on the reason, never on
/// the text, and `grpcurl` prints both.
pub mod errors {
    use std::collections::HashMap;
    use tonic::{Code, Status};
    use tonic_types::{ErrorDetails, StatusExt};

    /// Descriptors of `google.rpc.ErrorInfo` and its kin, for reflection: so
    /// `grpcurl` shows an error's reason rather than raw bytes.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic_types::pb::FILE_DESCRIPTOR_SET;

    /// `ErrorInfo.domain` of the agent's errors.
    pub const DOMAIN: &str = "agent.qdrant.io";

    /// A status with `message` for people and `reason` for programs.
    pub fn status(code: Code, message: impl Into<String>, reason: &str) -> Status {
        let details = ErrorDetails::with_error_info(reason, DOMAIN, HashMap::new());
        Status::with_error_details(code, message, details)
    }

    /// The reason an agent gave, if the status came from one.
    pub fn reason(s: &Status) -> Option<String> {
        s.get_details_error_info()
            .filter(|i| i.domain == DOMAIN && !i.reason.is_empty())
            .map(|i| i.reason)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_reason_travels_beside_the_message() {
            let s = status(
                Code::NotFound,
                "no manifest.json under s3://b/p",
                "ManifestMissing",
            );
            assert_eq!(s.message(), "no manifest.json under s3://b/p");
            assert_eq!(reason(&s).as_deref(), Some("ManifestMissing"));
            assert_eq!(reason(&Status::unavailable("connection refused")), None);
        }
    }
}

/// The largest message either side accepts. A WriteManifest for a cluster
/// with tens of thousands of shards is over gRPC's 4 MiB default (each
/// shard's result is about 250 bytes); anything larger than this is refused
/// before it is decoded, so a hostile peer cannot exhaust the other's memory.
pub const MAX_MESSAGE_BYTES: usize = 32 << 20;

/// The largest answer the operator decodes: one node's Task (about 250
/// bytes a shard, so over 30,000 shards on one node) or a manifest without
/// its object lists. Its reconciles run 64 at once under a 256 MiB limit, so
/// an agent (whose image a tenant names) gets a quarter of `MAX_MESSAGE_BYTES`.
pub const MAX_ANSWER_BYTES: usize = 8 << 20;

/// Encoded `FileDescriptorSet` of agent.proto, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/agent_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::v1::*;

    #[test]
    fn debug_output_of_a_request_never_shows_the_s3_secret() {
        let req = StartBackupRequest {
            storage: Some(StorageTarget {
                url: "s3://bucket/prefix".into(),
                credentials: Some(S3Credentials {
                    access_key_id: "AKIAEXAMPLE".into(),
                    secret_access_key: "wJalrXUtnFEMI-secret".into(),
                    session_token: "FwoGZXIvYXdzE-token".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = format!("{req:?} {req:#?}");
        assert!(text.contains("AKIAEXAMPLE"), "{text}");
        assert!(!text.contains("wJalrXUtnFEMI-secret"), "{text}");
        assert!(!text.contains("FwoGZXIvYXdzE-token"), "{text}");
        assert!(text.contains("<redacted>"));
    }
}
