//! Compiles `proto/` into Rust with tonic-prost-build. protox parses the
//! protos in pure Rust, so no `protoc` is needed on the machine, and its
//! descriptor set is written to OUT_DIR so that server reflection can serve
//! the exact contract the code was built from.

use std::{env, fs, path::PathBuf};

use protox::prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos: Vec<PathBuf> = fs::read_dir("proto/consent/v1")?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    println!("cargo:rerun-if-changed=proto");

    // The browser test is ignored, visibly and counted, only when asked.
    println!("cargo::rustc-check-cfg=cfg(skip_browser)");
    println!("cargo:rerun-if-env-changed=CONSENTD_SKIP_BROWSER");
    if env::var("CONSENTD_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        println!("cargo:rustc-cfg=skip_browser");
    }

    let descriptors = protox::compile(&protos, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // compile_fds does not write the descriptor set itself.
    fs::write(
        out_dir.join("consent_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    // Type names let the codec know which message it decodes, so that it
    // can count a request's list in the raw bytes first (grpc::codec).
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        // Lists are counted before decoding, and undecodable requests answer
        // INVALID_ARGUMENT (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::Codec")
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(descriptors, config)?;
    Ok(())
}
