//! Compiles `proto/rpc.proto`, the one copy of the plugin <-> ipamd gRPC contract, with protox
//! (pure Rust, so no `protoc` is needed on the machine): messages, the client the plugin uses and
//! the server ipamd (and the plugin's fake ipamd in its tests) implements.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/rpc.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
