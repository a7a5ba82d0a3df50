//! Compiles every .proto under this crate with protox (no protoc), writes the
//! encoded descriptor set that reflection, the gateway and OpenAPI read, and
//! generates prost/tonic code from that same set.
use std::{env, fs, path::PathBuf};

fn proto_files(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("proto dir is readable") {
        let path = entry.expect("proto dir entry").path();
        if path.is_dir() {
            proto_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let mut files = Vec::new();
    proto_files(&root.join("rdm"), &mut files);
    // The error details rdm sends (ErrorInfo, ...): in the descriptor set,
    // so reflection lets grpcurl and buf curl decode them.
    proto_files(&root.join("google/rpc"), &mut files);
    // The Broadband Forum's USP Record and Msg (BSD-3, third_party/usp):
    // the USP service's wire format.
    proto_files(&root.join("third_party/usp"), &mut files);
    files.sort();
    println!("cargo:rerun-if-changed=rdm");
    println!("cargo:rerun-if-changed=google");
    println!("cargo:rerun-if-changed=third_party");

    let mut compiler = protox::Compiler::new([&root])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(&files)?;
    // Encoded by protox itself: the prost_types round trip would drop the
    // custom options (google.api.http, rdm.api.v1.access) as unknown fields.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("rdm_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The module tree (rdm::snmp::v1, ...) is generated too: a new
        // package needs no edit here or in lib.rs.
        .include_file("rdm_modules.rs")
        .compile_fds(fds)?;
    Ok(())
}
