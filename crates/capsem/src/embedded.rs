//! The asset set compiled into this binary (see `build.rs`), and where its
//! files are found.

use std::path::{Path, PathBuf};

use capsem_core::assets::{CurrentAssets, Manifest};
use capsem_core::env;

use crate::exit::Failure;

include!(concat!(env!("OUT_DIR"), "/embedded_assets.rs"));

/// Where an installed capsem keeps its VM images, relative to the install
/// prefix (`/usr/bin/capsem` → `/usr/lib/capsem/assets`).
const INSTALLED_ASSETS: &str = "lib/capsem/assets";

/// Why capsem looks for its VM images in the directory it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssetSource {
    /// `$CAPSEM_ASSETS_DIR`.
    Env,
    /// `PREFIX/lib/capsem/assets` next to an installed binary.
    Installed,
    /// The build cache of the machine that built capsem.
    BuildCache,
}

impl AssetSource {
    /// How `capsem version` names it.
    pub fn name(self) -> &'static str {
        match self {
            AssetSource::Env => "CAPSEM_ASSETS_DIR",
            AssetSource::Installed => "installed",
            AssetSource::BuildCache => "build cache",
        }
    }
}

/// The pinned manifest and the directory to find its files in.
#[derive(Debug)]
pub struct Assets {
    /// The hashes compiled in; no directory can change them.
    pub manifest: Manifest,
    /// Where the files are looked for.
    pub dir: PathBuf,
    /// Why there.
    pub source: AssetSource,
}

/// The assets, looked for in `$CAPSEM_ASSETS_DIR`, then next to an
/// installed binary, then in the build cache.
pub fn assets() -> Result<Assets, Failure> {
    let installed = std::env::current_exe()
        .ok()
        .and_then(|exe| installed_dir(&exe));
    assets_from(
        CURRENT_JSON,
        env::path_var(env::CAPSEM_ASSETS_DIR),
        installed,
    )
}

/// `PREFIX/lib/capsem/assets` for a binary at `PREFIX/bin/capsem`, if
/// that directory exists.
fn installed_dir(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?.parent()?.join(INSTALLED_ASSETS);
    dir.is_dir().then_some(dir)
}

fn assets_from(
    current_json: Option<&str>,
    from_env: Option<PathBuf>,
    installed: Option<PathBuf>,
) -> Result<Assets, Failure> {
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
    let (dir, source) = match (from_env, installed) {
        (Some(dir), _) => (dir, AssetSource::Env),
        (None, Some(dir)) => (dir, AssetSource::Installed),
        (None, None) => (current.dir, AssetSource::BuildCache),
    };
    Ok(Assets {
        manifest: current.manifest,
        dir,
        source,
    })
}

#[cfg(test)]
mod tests {
    use capsem_core::assets::AssetEntry;
    use capsem_core::assets::manifest::MANIFEST_FORMAT;

    use super::*;

    #[test]
    fn a_build_without_assets_says_how_to_get_them() {
        let failure = assets_from(None, None, None).unwrap_err().to_string();
        assert!(failure.contains("built without VM assets"), "{failure}");
        assert!(failure.contains("cargo xtask build-assets"), "{failure}");
        let failure = assets_from(Some("{}"), None, None).unwrap_err().to_string();
        assert!(
            failure.contains("manifest built into capsem is invalid"),
            "{failure}"
        );
    }

    #[test]
    fn the_environment_wins_then_the_install_then_the_build_cache() {
        let entry = |file: &str| AssetEntry {
            file: file.to_owned(),
            blake3: "0".repeat(64),
            size: 1,
        };
        let built = CurrentAssets {
            dir: PathBuf::from("/build/cache/assets/0"),
            manifest: Manifest {
                format: MANIFEST_FORMAT,
                kernel: entry("vmlinux"),
                initramfs: entry("initramfs.cpio"),
                rootfs: entry("rootfs.erofs"),
                kernel_config: "kernel.config".to_owned(),
            },
        };
        let json = &serde_json::to_string(&built).unwrap();
        let (env_dir, installed) = (PathBuf::from("/env"), PathBuf::from("/usr/lib/x"));
        let found = |e: Option<&PathBuf>, i: Option<&PathBuf>| {
            let a = assets_from(Some(json), e.cloned(), i.cloned()).unwrap();
            assert_eq!(a.manifest, built.manifest, "the hashes never move");
            (a.dir, a.source)
        };
        let env_first = found(Some(&env_dir), Some(&installed));
        assert_eq!(env_first, (env_dir, AssetSource::Env));
        let install_next = found(None, Some(&installed));
        assert_eq!(install_next, (installed, AssetSource::Installed));
        assert_eq!(found(None, None), (built.dir, AssetSource::BuildCache));
    }

    #[test]
    fn the_installed_directory_is_beside_the_prefix_and_must_exist() {
        let prefix = tempfile::tempdir().unwrap();
        let exe = prefix.path().join("bin/capsem");
        assert_eq!(installed_dir(&exe), None);
        let assets = prefix.path().join("lib/capsem/assets");
        std::fs::create_dir_all(&assets).unwrap();
        assert_eq!(installed_dir(&exe), Some(assets));
        assert_eq!(installed_dir(Path::new("/capsem")), None);
    }
}
