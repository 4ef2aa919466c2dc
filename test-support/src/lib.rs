//! Test support for qdrant-operator: a Qdrant test double and a launcher for
//! a real local S3 server (moto).

pub mod qdrant_double;
pub mod s3_server;
