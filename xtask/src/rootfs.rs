//! The guest root filesystem: Debian bookworm from `mmdebstrap` with the
//! checked-in package list, Node.js and npm from the npm registry, optional
//! global npm packages, and the guest files; packed read-only as erofs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha512};

use crate::cache::{self, KeyBuilder};
use crate::{deps, proc, workspace};

/// Bump when the recipe below changes the image it produces.
const RECIPE: u32 = 1;
const SUITE: &str = "bookworm";
const MIRRORS: &[&str] = &[
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];
/// Documentation is dead weight in a sandbox; licences stay.
const DPKG_OPTS: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
];
/// The build machine's CA bundle: registry downloads must trust it, as it
/// may hold a proxy's CA that Debian's bundle lacks.
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Fixed, so the image depends only on its content.
const FS_UUID: &str = "c0a5e000-0000-4000-8000-000000000001";

fn images() -> PathBuf {
    workspace().join("images/rootfs")
}

#[derive(Debug, Deserialize)]
struct Runtimes {
    node: Download,
    npm: Download,
}

#[derive(Debug, Deserialize)]
struct Download {
    tarball: String,
    integrity: String,
}

/// Lines of a list file, without comments and blanks.
fn list(path: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// Builds (or finds) the rootfs; returns its cache directory holding
/// `rootfs.erofs`.
pub fn build(log_dir: &Path) -> Result<PathBuf> {
    let dir = images();
    let diagnostics = workspace().join("images/diagnostics");
    let key = KeyBuilder::new("rootfs", RECIPE)
        .tree(&dir)?
        .tree(&diagnostics)?
        .add("mmdebstrap", deps::version("mmdebstrap")?.as_bytes())
        .add("erofs-utils", deps::version("erofs-utils")?.as_bytes())
        .finish();
    cache::get_or_build("rootfs", &key, |out| {
        let log = log_dir.join("rootfs.log");
        let tree = out.join("tree");
        bootstrap(&tree, &list(&dir.join("packages.txt"))?, &log)?;
        install_runtimes(&tree, out, &log)?;
        install_npm_packages(&tree, &list(&dir.join("npm-packages.txt"))?, out, &log)?;
        copy_tree(&dir.join("files"), &tree)?;
        install_diagnostics(&diagnostics, &tree)?;
        clean(&tree)?;
        pack(&tree, &out.join("rootfs.erofs"), &log)?;
        fs::remove_dir_all(&tree).context("removing the rootfs tree")
    })
}

fn bootstrap(tree: &Path, packages: &[String], log: &Path) -> Result<()> {
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg(if deps::is_root() {
        "--mode=root"
    } else {
        "--mode=unshare"
    })
    .arg("--variant=minbase")
    .arg(format!("--include={}", packages.join(",")))
    .arg("--aptopt=Acquire::Retries \"3\"");
    for opt in DPKG_OPTS {
        cmd.arg(format!("--dpkgopt={opt}"));
    }
    cmd.arg(SUITE).arg(tree).args(MIRRORS);
    proc::run_logged(&mut cmd, log)
}

/// Downloads `dl`, checks its SHA-512 integrity, and unpacks it into `dest`.
fn fetch(dl: &Download, scratch: &Path, dest: &Path, log: &Path) -> Result<()> {
    let file = scratch.join("download.tgz");
    proc::run_logged(
        Command::new("curl")
            .args(["-fsSL", "--retry", "3", "--cacert", HOST_CA_BUNDLE, "-o"])
            .arg(&file)
            .arg(&dl.tarball),
        log,
    )?;
    let bytes = fs::read(&file)?;
    let actual = format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&bytes))
    );
    if actual != dl.integrity {
        bail!(
            "{} does not match its pinned integrity (got {actual}, expected {})",
            dl.tarball,
            dl.integrity
        );
    }
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

fn install_runtimes(tree: &Path, scratch: &Path, log: &Path) -> Result<()> {
    let runtimes: Runtimes = toml::from_str(&fs::read_to_string(images().join("runtimes.toml"))?)
        .context("parsing images/rootfs/runtimes.toml")?;
    let node_pkg = scratch.join("node");
    fetch(&runtimes.node, scratch, &node_pkg, log)?;
    let local = tree.join("usr/local");
    fs::create_dir_all(local.join("bin"))?;
    fs::copy(node_pkg.join("bin/node"), local.join("bin/node")).context("installing node")?;
    fs::remove_dir_all(&node_pkg)?;
    let npm = local.join("lib/node_modules/npm");
    fetch(&runtimes.npm, scratch, &npm, log)?;
    for (name, script) in [("npm", "npm-cli.js"), ("npx", "npx-cli.js")] {
        std::os::unix::fs::symlink(
            format!("../lib/node_modules/npm/bin/{script}"),
            local.join("bin").join(name),
        )
        .with_context(|| format!("linking {name}"))?;
    }
    Ok(())
}

/// Installs global npm packages with the rootfs's own node and npm, run on
/// the build host (same architecture and libc) into the tree's prefix.
fn install_npm_packages(
    tree: &Path,
    packages: &[String],
    scratch: &Path,
    log: &Path,
) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    let home = scratch.join("npm-home");
    fs::create_dir_all(&home)?;
    let local = tree.join("usr/local");
    proc::run_logged(
        Command::new(local.join("bin/node"))
            .arg(local.join("lib/node_modules/npm/bin/npm-cli.js"))
            .args(["install", "--global", "--no-fund", "--no-audit", "--prefix"])
            .arg(&local)
            .args(packages)
            .env("HOME", &home)
            .env("npm_config_userconfig", home.join("npmrc"))
            .env("npm_config_cafile", HOST_CA_BUNDLE)
            .env("NODE_EXTRA_CA_CERTS", HOST_CA_BUNDLE)
            .env("npm_config_update_notifier", "false"),
        log,
    )?;
    fs::remove_dir_all(&home)?;
    Ok(())
}

/// Copies `from` over `to`, file by file.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            fs::create_dir_all(&dest)?;
            copy_tree(&entry.path(), &dest)?;
        } else {
            let _ = fs::remove_file(&dest);
            fs::copy(entry.path(), &dest)
                .with_context(|| format!("copying to {}", dest.display()))?;
        }
    }
    Ok(())
}

/// Installs `capsem-doctor` (alias `capsem-test`) and its pytest suite.
fn install_diagnostics(from: &Path, tree: &Path) -> Result<()> {
    let lib = tree.join("usr/local/lib/capsem-doctor/tests");
    fs::create_dir_all(&lib)?;
    copy_tree(&from.join("tests"), &lib)?;
    let bin = tree.join("usr/local/bin");
    fs::copy(from.join("capsem-doctor"), bin.join("capsem-doctor"))
        .context("installing capsem-doctor")?;
    std::os::unix::fs::symlink("capsem-doctor", bin.join("capsem-test"))
        .context("linking capsem-test")
}

/// Drops caches and per-machine state the build left behind.
fn clean(tree: &Path) -> Result<()> {
    for dir in [
        "var/cache/apt",
        "var/lib/apt/lists",
        "var/log",
        "tmp",
        "root",
    ] {
        let path = tree.join(dir);
        if path.is_dir() {
            for entry in fs::read_dir(&path)? {
                let entry = entry?.path();
                if entry.is_dir() {
                    fs::remove_dir_all(&entry)?;
                } else {
                    fs::remove_file(&entry)?;
                }
            }
        }
    }
    fs::write(tree.join("etc/machine-id"), b"")?;
    // The guest has no resolver until the network policy provides one.
    fs::write(tree.join("etc/resolv.conf"), b"")?;
    Ok(())
}

fn pack(tree: &Path, image: &Path, log: &Path) -> Result<()> {
    proc::run_logged(
        Command::new("mkfs.erofs")
            .args(["-zlz4hc", "-T0", "--all-root", "--quiet"])
            .arg(format!("-U{FS_UUID}"))
            .arg(image)
            .arg(tree),
        log,
    )
}
