//! Compiles ipamd's `proto/rpc.proto` (the single copy of the contract) into a client only.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "../ipamd/proto";
    let proto = "../ipamd/proto/rpc.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], [dir])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
