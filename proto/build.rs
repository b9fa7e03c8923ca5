//! Compiles the `.proto` files with `protox` (pure Rust, no `protoc` needed) and generates the
//! tonic clients and servers with `tonic-prost-build`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["common", "txn", "sequencer", "shard", "admin"]
        .map(|name| format!("proto/sealdb/v1/{name}.proto"));
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(&files, ["proto"])?;
    tonic_prost_build::compile_fds(descriptors)?;
    Ok(())
}
