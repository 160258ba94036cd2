//! The asset set compiled into this binary (see `build.rs`).

use std::path::PathBuf;

use capsem_core::assets::{CurrentAssets, Manifest};
use capsem_core::env;

use crate::exit::Failure;

include!(concat!(env!("OUT_DIR"), "/embedded_assets.rs"));

/// The pinned manifest and the directory to find its files in
/// (`$CAPSEM_ASSETS_DIR` overrides the directory, never the hashes).
pub fn assets() -> Result<(Manifest, PathBuf), Failure> {
    assets_from(CURRENT_JSON)
}

fn assets_from(current_json: Option<&str>) -> Result<(Manifest, PathBuf), Failure> {
    let json = current_json.ok_or_else(|| {
        Failure::new("this capsem was built without VM assets").hint(
            "run `cargo xtask build-assets`, then rebuild capsem (`cargo xtask run -- CMD` does both)",
        )
    })?;
    let current = CurrentAssets::parse(json).map_err(|e| {
        Failure::new(format!(
            "the asset manifest built into capsem is invalid: {e}"
        ))
        .hint("rebuild the assets and capsem with `cargo xtask build-assets`")
    })?;
    let dir = env::path_var(env::CAPSEM_ASSETS_DIR).unwrap_or(current.dir);
    Ok((current.manifest, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_without_assets_says_how_to_get_them() {
        let failure = assets_from(None).unwrap_err().to_string();
        assert!(failure.contains("built without VM assets"), "{failure}");
        assert!(failure.contains("cargo xtask build-assets"), "{failure}");
        let failure = assets_from(Some("{}")).unwrap_err().to_string();
        assert!(
            failure.contains("manifest built into capsem is invalid"),
            "{failure}"
        );
    }
}
