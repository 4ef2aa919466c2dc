//! Generated types and service stubs for `qdrant.agent.v1.Agent`.

pub mod v1 {
    tonic::include_proto!("qdrant.agent.v1");
}

/// Encoded `FileDescriptorSet` of agent.proto, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/agent_descriptor.bin"));
