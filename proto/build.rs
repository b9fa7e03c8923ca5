//! Compiles the `.proto` files with `protox` (pure Rust, no `protoc` needed) and generates the
//! messages, and with the `grpc` feature the tonic clients and servers, with
//! `tonic-prost-build`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["common", "txn", "builtin", "sequencer", "shard", "admin", "raft"]
        .map(|name| format!("proto/sealdb/v1/{name}.proto"));
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(&files, ["proto"])?;
    // Services only with the `grpc` feature; the messages always.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .compile_fds(descriptors)?;
    Ok(())
}
