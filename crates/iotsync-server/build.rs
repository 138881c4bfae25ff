//! Generates the gRPC server of `proto/iotsync/sync/v1/sync.proto` with a pure-Rust
//! protobuf compiler (protox), so building needs no `protoc` (ADR 0004).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest).join("../../proto");
    let file = root.join("iotsync/sync/v1/sync.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
