//! qdrant-agent: streams Qdrant shard snapshots to and from object stores.

pub mod budget;
pub mod error;
pub mod keys;
pub mod store;
pub mod units;
pub mod upload;
pub mod verify;

pub use error::{Error, Result};
pub mod backup;
pub mod cli;
pub mod defaults;
pub mod drain;
pub mod manifest;
pub mod metrics;
pub mod node;
pub mod progress;
pub mod qdrant;
pub mod qdrant_config;
pub mod restore;
pub mod server;
