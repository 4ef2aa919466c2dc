//! The names, labels and paths that the cluster renderer, the injection
//! webhook, the agents' client and the target of an operation share: one
//! place, so none of them has to import another to agree on a name.

use crate::crd::QdrantCluster;
use std::collections::BTreeMap;

/// Where Qdrant keeps its data and its snapshots in its image.
pub const STORAGE_PATH: &str = "/qdrant/storage";
pub const SNAPSHOTS_PATH: &str = "/qdrant/snapshots";

/// Key of the agent token in its Secret.
pub const AGENT_TOKEN_KEY: &str = "token";
/// The agent container's name in a QdrantCluster's pods.
pub const AGENT_CONTAINER: &str = "agent";

/// Names of the objects of one cluster, derived from its name.
pub struct Names {
    pub cluster: String,
}

impl Names {
    pub fn of(c: &QdrantCluster) -> Self {
        Self {
            cluster: c.metadata.name.clone().unwrap_or_default(),
        }
    }
    pub fn statefulset(&self) -> String {
        self.cluster.clone()
    }
    pub fn headless(&self) -> String {
        format!("{}-headless", self.cluster)
    }
    pub fn client_service(&self) -> String {
        self.cluster.clone()
    }
    pub fn config(&self) -> String {
        format!("{}-config", self.cluster)
    }
    pub fn service_account(&self) -> String {
        format!("{}-qdrant", self.cluster)
    }
    pub fn agent_token(&self) -> String {
        format!("{}-agent-token", self.cluster)
    }
    pub fn agent_tls(&self) -> String {
        format!("{}-agent-tls", self.cluster)
    }
    pub fn pdb(&self) -> String {
        self.cluster.clone()
    }
}

pub fn selector_labels(c: &QdrantCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "qdrant".into()),
        ("app.kubernetes.io/instance".into(), Names::of(c).cluster),
    ])
}

/// The injection webhook's names (pods that Qdrant's own chart or a
/// hand-written StatefulSet runs).
/// The pod label that asks for the agent (set through the chart's
/// `podLabels`); the webhook's objectSelector matches it.
pub const OPT_IN: &str = "qdrant.io/backup-agent";
/// The injected container's name.
pub const CONTAINER: &str = "qdrant-agent";
/// The agent's gRPC port in injected pods (health answers on the next).
pub const PORT: i32 = 50051;

/// Names of the Secrets the agents of `workload` read.
pub fn token_secret(workload: &str) -> String {
    format!("{workload}-agent-token")
}

pub fn tls_secret(workload: &str) -> String {
    format!("{workload}-agent-tls")
}

/// The annotation the webhook leaves on a labelled pod it admitted without
/// the agent: why, so that a backup of its StatefulSet can say it.
pub const SKIPPED: &str = "qdrant.io/backup-agent-skipped";
