//! The pinned Node.js, npm and uv (`images/rootfs/runtimes.toml`):
//! downloaded once into the cache, checked against their SHA-512
//! integrity, used to build the guest's npm packages and copied into the
//! rootfs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha512};

use crate::cache::{self, KeyBuilder};
use crate::{proc, workspace};

/// The build machine's CA bundle: registry downloads must trust it, as it
/// may hold a proxy's CA that Debian's bundle lacks.
pub const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Bump when the layout below changes.
const RECIPE: u32 = 2;

#[derive(Debug, Deserialize)]
struct Runtimes {
    node: Download,
    npm: Download,
    uv: Wheel,
}

#[derive(Debug, Deserialize)]
struct Download {
    tarball: String,
    integrity: String,
}

/// A wheel from PyPI.
#[derive(Debug, Deserialize)]
struct Wheel {
    wheel: String,
    integrity: String,
}

/// An unpacked Node.js with npm.
pub struct Toolchain {
    dir: PathBuf,
}

/// The npm project of guest packages.
pub fn project() -> PathBuf {
    workspace().join("images/rootfs/npm")
}

impl Toolchain {
    /// Downloads (or finds) the pinned toolchain.
    pub fn get(log: &Path) -> Result<Toolchain> {
        let runtimes_toml = workspace().join("images/rootfs/runtimes.toml");
        let key = KeyBuilder::new("node", RECIPE)
            .file(&runtimes_toml)?
            .finish();
        let dir = cache::get_or_build("tools", &key, |out| {
            let runtimes: Runtimes = toml::from_str(&fs::read_to_string(&runtimes_toml)?)
                .context("parsing images/rootfs/runtimes.toml")?;
            fetch(&runtimes.node, out, &out.join("node"), log)?;
            fetch(&runtimes.npm, out, &out.join("npm"), log)?;
            fetch_wheel(&runtimes.uv, out, &out.join("uv"), log)
        })?;
        Ok(Toolchain { dir })
    }

    /// The `node` binary.
    pub fn node(&self) -> PathBuf {
        self.dir.join("node/bin/node")
    }

    /// The unpacked npm package.
    pub fn npm_package(&self) -> PathBuf {
        self.dir.join("npm")
    }

    /// The directory holding the `uv` and `uvx` binaries.
    pub fn uv_bin(&self) -> PathBuf {
        let unpacked = self.dir.join("uv");
        fs::read_dir(&unpacked)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path().join("scripts"))
            .find(|scripts| scripts.join("uv").is_file())
            .unwrap_or_else(|| unpacked.join("scripts"))
    }

    /// `npm ARGS` in `dir`, with a private home and the host's CAs.
    pub fn npm(&self, dir: &Path, home: &Path) -> Command {
        let mut cmd = Command::new(self.node());
        cmd.arg(self.npm_package().join("bin/npm-cli.js"))
            .current_dir(dir)
            .env("HOME", home)
            .env("npm_config_userconfig", home.join("npmrc"))
            .env("npm_config_cache", home.join("cache"))
            .env("npm_config_cafile", HOST_CA_BUNDLE)
            .env("NODE_EXTRA_CA_CERTS", HOST_CA_BUNDLE)
            .env("npm_config_update_notifier", "false")
            .env("npm_config_fund", "false")
            .env("npm_config_audit", "false");
        cmd
    }
}

/// Whether the lock file records exactly the dependencies package.json asks
/// for.
fn lock_matches(project: &Path) -> Result<bool> {
    let read = |name: &str| -> Result<Value> {
        let path = project.join(name);
        serde_json::from_str(&fs::read_to_string(&path)?)
            .with_context(|| format!("parsing {}", path.display()))
    };
    let wanted = read("package.json")?["dependencies"].clone();
    let locked = read("package-lock.json")
        .map(|lock| lock["packages"][""]["dependencies"].clone())
        .unwrap_or(Value::Null);
    Ok(wanted == locked)
}

/// Brings `package-lock.json` in line with `package.json` after someone
/// changed a version: the one-line update, then `cargo xtask build-assets`.
pub fn refresh_lock(log: &Path) -> Result<()> {
    let project = project();
    if lock_matches(&project)? {
        return Ok(());
    }
    let toolchain = Toolchain::get(log)?;
    let scratch = std::env::temp_dir().join(format!("capsem-npm-lock-{}", std::process::id()));
    fs::create_dir_all(&scratch)?;
    fs::copy(project.join("package.json"), scratch.join("package.json"))?;
    let home = scratch.join("home");
    proc::run_logged(
        toolchain
            .npm(&scratch, &home)
            .args(["install", "--package-lock-only", "--ignore-scripts"]),
        log,
    )?;
    fs::copy(
        scratch.join("package-lock.json"),
        project.join("package-lock.json"),
    )
    .context("updating package-lock.json")?;
    fs::remove_dir_all(&scratch)?;
    if !lock_matches(&project)? {
        bail!("npm did not produce a lock file matching images/rootfs/npm/package.json");
    }
    eprintln!("xtask: updated images/rootfs/npm/package-lock.json: commit it with package.json");
    Ok(())
}

/// Downloads `url` into `file` and checks its SHA-512 `integrity`.
fn download(url: &str, integrity: &str, file: &Path, log: &Path) -> Result<()> {
    proc::run_logged(
        Command::new("curl")
            .args(["-fsSL", "--retry", "3", "--cacert", HOST_CA_BUNDLE, "-o"])
            .arg(file)
            .arg(url),
        log,
    )?;
    let bytes = fs::read(file)?;
    let actual = format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&bytes))
    );
    if actual != integrity {
        bail!("{url} does not match its pinned integrity (got {actual}, expected {integrity})");
    }
    Ok(())
}

/// Downloads a wheel, checks it, and unpacks it (a zip) into `dest`.
fn fetch_wheel(wheel: &Wheel, scratch: &Path, dest: &Path, log: &Path) -> Result<()> {
    let file = scratch.join("download.whl");
    download(&wheel.wheel, &wheel.integrity, &file, log)?;
    fs::create_dir_all(dest)?;
    proc::run_logged(
        Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&file)
            .arg(dest),
        log,
    )?;
    fs::remove_file(&file)?;
    Ok(())
}

/// Downloads `dl`, checks its SHA-512 integrity, and unpacks it into `dest`.
fn fetch(dl: &Download, scratch: &Path, dest: &Path, log: &Path) -> Result<()> {
    let file = scratch.join("download.tgz");
    download(&dl.tarball, &dl.integrity, &file, log)?;
    fs::create_dir_all(dest)?;
    proc::run_logged(
        Command::new("tar")
            .args(["xzf"])
            .arg(&file)
            .args(["--strip-components=1", "--no-same-owner", "-C"])
            .arg(dest),
        log,
    )?;
    fs::remove_file(&file)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_lock_matches_package_json() {
        assert!(
            lock_matches(&project()).unwrap(),
            "images/rootfs/npm/package-lock.json is stale: run cargo xtask build-assets"
        );
    }

    #[test]
    fn a_changed_version_makes_the_lock_stale() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["package.json", "package-lock.json"] {
            fs::copy(project().join(name), dir.path().join(name)).unwrap();
        }
        let path = dir.path().join("package.json");
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("0.61.0", "0.60.0");
        fs::write(&path, text).unwrap();
        assert!(!lock_matches(dir.path()).unwrap());
    }
}
