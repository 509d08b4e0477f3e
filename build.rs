//! Generates the etcd v3 API bindings (fleet mode) from the minimal proto files in `proto/`, with
//! protox, a protobuf compiler written in Rust: the build needs no system `protoc`, so the README's
//! first command works on a machine that has only the Rust toolchain.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["rpc.proto", "kv.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
