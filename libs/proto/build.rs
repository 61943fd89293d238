//! Compiles every contract in `proto/` into `OUT_DIR`, with a descriptor set for reflection.

use std::path::PathBuf;

const PROTO_FILES: [&str; 8] = [
    "leadflow/events/v1/envelope.proto",
    "leadflow/events/v1/capture.proto",
    "leadflow/events/v1/qualification.proto",
    "leadflow/events/v1/messaging.proto",
    "leadflow/capture/v1/capture.proto",
    "leadflow/qualification/v1/qualification.proto",
    "leadflow/messaging/v1/messaging.proto",
    "leadflow/analytics/v1/analytics.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // A vendored protoc keeps a fresh machine free of a system install.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;

    let protos = PROTO_FILES.map(|file| proto_root.join(file));
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("leadflow_descriptor.bin"))
        .compile_with_config(config, &protos, &[proto_root.clone(), include])?;
    println!("cargo:rerun-if-changed={}", proto_root.display());
    Ok(())
}
