//! Compiles the asset manifest into the binary, so the hashes capsem trusts
//! cannot change without rebuilding it.
//!
//! The manifest comes from `$CAPSEM_MANIFEST` (set by `cargo xtask`), else
//! from the asset cache's `current.json`, which `cargo xtask build-assets`
//! rewrites whenever the current asset set changes. Without one, capsem is
//! built without assets and says how to build them.
//!
//! It also generates the types and service traits of the E2B envd protocol
//! (`proto/e2b/`) that `capsem e2b` serves: protox compiles the files (no
//! `protoc` needed), connectrpc-build writes the Rust.

use std::path::PathBuf;
use std::{env, fs};

fn main() {
    embed_manifest();
    generate_envd();
}

fn generate_envd() {
    use prost::Message;
    let files = ["process.proto", "filesystem.proto"];
    println!("cargo:rerun-if-changed=proto/e2b");
    let set = protox::compile(files, ["proto/e2b"]).expect("compiling proto/e2b");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let descriptors = out.join("envd.descriptors");
    fs::write(&descriptors, set.encode_to_vec()).expect("writing envd.descriptors");
    connectrpc_build::Config::new()
        .files(&files)
        .descriptor_set(&descriptors)
        .include_file("envd.rs")
        .compile()
        .expect("generating the envd services");
}

fn embed_manifest() {
    for var in [
        "CAPSEM_MANIFEST",
        "CAPSEM_CACHE_DIR",
        "XDG_CACHE_HOME",
        "HOME",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let path = env::var_os("CAPSEM_MANIFEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("current.json"));
    println!("cargo:rerun-if-changed={}", path.display());
    let embedded = match fs::read_to_string(&path) {
        Ok(json) => format!("Some({json:?})"),
        Err(_) => "None".to_owned(),
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(
        out.join("embedded_assets.rs"),
        format!(
            "/// `current.json` of the asset cache at build time, if there was one.\n\
             pub const CURRENT_JSON: Option<&str> = {embedded};\n"
        ),
    )
    .expect("writing embedded_assets.rs");
}

/// The asset cache; the same rule as `xtask/src/cache.rs`.
fn cache_dir() -> PathBuf {
    let var = |name| {
        env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("CAPSEM_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("capsem")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/capsem")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache/capsem"))
}
