//! qdrant-agent: streams Qdrant shard snapshots to and from object stores.

pub mod error;
pub mod keys;
pub mod store;
pub mod upload;

pub use error::{Error, Result};
