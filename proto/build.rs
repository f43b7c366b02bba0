//! Compiles `pixelmesh/v1/*.proto` with protox (pure Rust, no system `protoc`) and keeps the
//! file descriptor set for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "pixelmesh/v1/types.proto",
    "pixelmesh/v1/gateway.proto",
    "pixelmesh/v1/scheduler.proto",
    "pixelmesh/v1/storage.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=pixelmesh");
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("pixelmesh_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
