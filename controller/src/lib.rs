//! qdrant-operator: the custom resources of group `qdrant.io` and, as they
//! are built, the reconcilers that drive Qdrant and its agents.

pub mod agent_client;
pub mod agents;
pub mod backup_controller;
pub mod backup_decide;
pub mod backup_plan;
pub mod cluster_controller;
pub mod crd;
pub mod decide;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod operation;
pub mod pki;
pub mod render;
pub mod report;
pub mod restore_controller;
pub mod schedule;
pub mod schedule_controller;
