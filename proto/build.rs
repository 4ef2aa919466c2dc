//! Compiles agent.proto with protox (pure Rust, so no protoc is needed to
//! build) into OUT_DIR, and keeps the encoded descriptor set for reflection.
use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/qdrant/agent/v1/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("agent_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Credentials get a Debug that prints no secret (lib.rs).
        .skip_debug([".qdrant.agent.v1.S3Credentials"])
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
