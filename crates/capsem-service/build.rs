//! Points the embedded web UI at the built bundle.
//!
//! The bundle comes from `$CAPSEM_UI_DIST` (set by `cargo xtask`), else
//! from the directory named in the cache's `ui.current`, which `cargo
//! xtask` rewrites whenever it builds the UI. Without one, capsem is built
//! without its UI and `capsem ui` says how to build it.

use std::path::PathBuf;
use std::{env, fs};

fn main() {
    for var in [
        "CAPSEM_UI_DIST",
        "CAPSEM_CACHE_DIR",
        "XDG_CACHE_HOME",
        "HOME",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let pointer = cache_dir().join("ui.current");
    println!("cargo:rerun-if-changed={}", pointer.display());
    let given = env::var_os("CAPSEM_UI_DIST")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    if let Some(dist) = &given {
        assert!(
            dist.join("index.html").is_file(),
            "CAPSEM_UI_DIST={} holds no index.html",
            dist.display()
        );
    }
    let cached = || {
        fs::read_to_string(&pointer)
            .ok()
            .map(|dir| PathBuf::from(dir.trim()).join("dist"))
            .filter(|dist| dist.join("index.html").is_file())
    };
    let (dist, from) = match (given, cached()) {
        (Some(dist), _) => (dist, "env"),
        (None, Some(dist)) => (dist, "cache"),
        (None, None) => {
            let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
            let empty = out.join("no-ui");
            fs::create_dir_all(&empty).expect("creating an empty UI directory");
            (empty, "none")
        }
    };
    println!("cargo:rerun-if-changed={}", dist.display());
    println!("cargo:rustc-env=CAPSEM_UI_DIST={}", dist.display());
    // Where the bundle came from: `none` lets the tests know it is absent.
    println!("cargo:rustc-env=CAPSEM_UI_FROM={from}");
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
