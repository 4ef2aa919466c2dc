//! qdrant-operator: the custom resources of group `qdrant.io` and the
//! reconcilers that drive Qdrant and its agents.

pub mod agent_client;
pub mod agents;
pub mod backup;
pub mod cluster;
pub mod crd;
pub mod cron;
pub mod inject;
pub mod names;
pub mod operation;
pub mod pki;
pub mod plan;
pub mod restore;
pub mod runtime;
pub mod schedule;
pub mod settings;
pub mod sidecar;
pub mod target;
pub mod tasks;
pub mod wake;
pub mod webhook;
