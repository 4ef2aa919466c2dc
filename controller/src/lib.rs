//! qdrant-operator: the custom resources of group `qdrant.io` and, as they
//! are built, the reconcilers that drive Qdrant and its agents.

pub mod cluster_controller;
pub mod crd;
pub mod decide;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod render;
