//! What the operator's administrator sets for every cluster (flags, or the
//! chart's values): the default images, and which storage settings that put
//! other tenants at risk are allowed.

/// Qdrant's image repository unless a cluster or `--qdrant-image` names
/// another.
pub const DEFAULT_IMAGE: &str = "qdrant/qdrant";

/// The images a cluster runs unless its spec names others: set
/// operator-wide (`--qdrant-image`, `--agent-image`) for clusters that pull
/// from a registry the user controls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// Qdrant's image repository; the tag is the cluster's `spec.version`.
    pub qdrant: String,
    /// The agent's image, with its tag.
    pub agent: String,
}

impl Default for Images {
    fn default() -> Self {
        Self {
            qdrant: DEFAULT_IMAGE.into(),
            agent: default_agent_image(),
        }
    }
}

/// The agent image the operator ships with.
pub fn default_agent_image() -> String {
    format!(
        "ghcr.io/qdrant-operator/qdrant-agent:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Storage settings that put other tenants at risk, allowed only when the
/// operator's administrator says so (flags, or the chart's `storage`
/// values). Both are off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoragePolicy {
    /// Without `credentialsSecretRef` the agents use the pod's or node's
    /// cloud identity (IRSA, instance profile), which every tenant whose
    /// pods run there shares.
    pub ambient_credentials: bool,
    /// An `http://` endpoint sends credentials' signatures and every byte
    /// of the backup in clear text.
    pub insecure_endpoints: bool,
}
