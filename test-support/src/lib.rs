//! Test support for qdrant-operator: the real servers the tests run against
//! (Qdrant, a Kubernetes control plane, S3) with launchers that never let a
//! server outlive its test, a test kubelet that runs Pods as processes, and
//! the Qdrant TEST DOUBLE for what the real server cannot do on request
//! (stall or break a stream, answer as an old version).

pub mod bench;
pub mod bins;
pub mod control_plane;
pub mod gate;
pub mod kubelet;
pub mod node;
pub mod process;
pub mod prometheus;
pub mod qdrant_double;
pub mod real_qdrant;
pub mod s3_server;
pub mod stack;
