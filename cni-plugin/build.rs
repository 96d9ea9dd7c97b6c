//! Compiles ipamd's `proto/rpc.proto` (the single copy of the contract): a client for the
//! plugin (`$OUT_DIR/rpc.rs`), and a server-only copy (`$OUT_DIR/server/rpc.rs`) that only the
//! plugin's integration tests include, to run a fake ipamd.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "../ipamd/proto";
    let proto = "../ipamd/proto/rpc.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], [dir])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds.clone())?;
    let server_dir = PathBuf::from(std::env::var("OUT_DIR")?).join("server");
    std::fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .out_dir(server_dir)
        .compile_fds(fds)?;
    Ok(())
}
