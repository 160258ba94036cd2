//! The guest root filesystem: Debian bookworm from `mmdebstrap` with the
//! checked-in package list, Node.js and npm from the npm registry, uv from
//! PyPI, the npm project of AI CLIs (`images/rootfs/npm`, installed
//! exactly as locked), the diagnostics and the guest files; stripped of
//! setuid and setgid bits; packed read-only as erofs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cache::{self, KeyBuilder};
use crate::node::{self, Toolchain};
use crate::{deps, proc, workspace};

/// Bump when the recipe below changes the image it produces.
const RECIPE: u32 = 6;
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
/// Fixed, so the image depends only on its content.
const FS_UUID: &str = "c0a5e000-0000-4000-8000-000000000001";

fn images() -> PathBuf {
    workspace().join("images/rootfs")
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
    node::refresh_lock(&log_dir.join("rootfs.log"))?;
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
        let toolchain = Toolchain::get(&log)?;
        install_runtimes(&tree, &toolchain)?;
        install_npm_project(&tree, &toolchain, out, &log)?;
        copy_tree(&dir.join("files"), &tree)?;
        install_diagnostics(&diagnostics, &tree)?;
        clean(&tree)?;
        for_agents(&tree)?;
        strip_setid(&tree)?;
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

/// Copies Node.js, npm and uv from the pinned toolchain into `/usr/local`.
fn install_runtimes(tree: &Path, toolchain: &Toolchain) -> Result<()> {
    let local = tree.join("usr/local");
    fs::create_dir_all(local.join("bin"))?;
    fs::copy(toolchain.node(), local.join("bin/node")).context("installing node")?;
    for uv in ["uv", "uvx"] {
        let to = local.join("bin").join(uv);
        fs::copy(toolchain.uv_bin().join(uv), &to).with_context(|| format!("installing {uv}"))?;
        fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let npm = local.join("lib/node_modules/npm");
    fs::create_dir_all(&npm)?;
    copy_tree(&toolchain.npm_package(), &npm)?;
    for (name, script) in [("npm", "npm-cli.js"), ("npx", "npx-cli.js")] {
        std::os::unix::fs::symlink(
            format!("../lib/node_modules/npm/bin/{script}"),
            local.join("bin").join(name),
        )
        .with_context(|| format!("linking {name}"))?;
    }
    Ok(())
}

/// Installs the npm project (`images/rootfs/npm`) exactly as locked into
/// `/usr/local/lib/capsem-npm`, and links its commands into `/usr/local/bin`.
/// npm runs on the build host (same architecture and libc as the guest)
/// with install scripts off, except for the packages the project's
/// `capsem.allowScripts` names.
fn install_npm_project(
    tree: &Path,
    toolchain: &Toolchain,
    scratch: &Path,
    log: &Path,
) -> Result<()> {
    let project = node::project();
    let prefix = tree.join("usr/local/lib/capsem-npm");
    fs::create_dir_all(&prefix)?;
    for name in ["package.json", "package-lock.json"] {
        fs::copy(project.join(name), prefix.join(name))
            .with_context(|| format!("copying {name}"))?;
    }
    let home = scratch.join("npm-home");
    proc::run_logged(
        toolchain
            .npm(&prefix, &home)
            .args(["ci", "--ignore-scripts"]),
        log,
    )?;
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(project.join("package.json"))?)?;
    let allowed: Vec<&str> = manifest["capsem"]["allowScripts"]
        .as_array()
        .map(|names| names.iter().filter_map(|n| n.as_str()).collect())
        .unwrap_or_default();
    if !allowed.is_empty() {
        proc::run_logged(
            toolchain.npm(&prefix, &home).arg("rebuild").args(&allowed),
            log,
        )?;
    }
    let bin = prefix.join("node_modules/.bin");
    for entry in fs::read_dir(&bin).with_context(|| format!("listing {}", bin.display()))? {
        let name = entry?.file_name();
        std::os::unix::fs::symlink(
            Path::new("../lib/capsem-npm/node_modules/.bin").join(&name),
            tree.join("usr/local/bin").join(&name),
        )
        .with_context(|| format!("linking {}", name.to_string_lossy()))?;
    }
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
    // capsem-agent answers DNS on loopback; the host decides every answer.
    fs::write(tree.join("etc/resolv.conf"), b"nameserver 127.0.0.1\n")?;
    trust_store_in_run(tree)
}

/// The guest's CA bundle is written at boot to `/run/capsem`, and holds
/// only the host's interception CA (every guest TLS connection ends at the
/// proxy); the read-only image points the usual path there. The
/// distribution's roots go, hashed directory links included, so that no
/// TLS client in the guest trusts anything else.
fn trust_store_in_run(tree: &Path) -> Result<()> {
    let certs = tree.join("etc/ssl/certs");
    fs::remove_dir_all(&certs).context("removing the distribution's roots")?;
    fs::create_dir_all(&certs)?;
    std::os::unix::fs::symlink(
        "/run/capsem/ca-certificates.crt",
        certs.join("ca-certificates.crt"),
    )
    .context("linking the CA bundle")
}

/// What lets an agent install what it needs once the root is an overlay:
/// pip and uv install into the system (the PEP 668 marker protects a
/// system the agent cannot break for anyone but itself, so it goes), apt
/// finds its working directories, `fd` is fd-find's name.
fn for_agents(tree: &Path) -> Result<()> {
    for marker in glob_python(tree, "EXTERNALLY-MANAGED")? {
        fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
    }
    for dir in [
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/log/apt",
    ] {
        fs::create_dir_all(tree.join(dir)).with_context(|| format!("creating {dir}"))?;
    }
    let fd = tree.join("usr/local/bin/fd");
    if !fd.exists() {
        std::os::unix::fs::symlink("/usr/bin/fdfind", fd).context("linking fd")?;
    }
    Ok(())
}

/// Files named `name` directly in `/usr/lib/python3*`.
fn glob_python(tree: &Path, name: &str) -> Result<Vec<PathBuf>> {
    let lib = tree.join("usr/lib");
    let mut found = Vec::new();
    for entry in fs::read_dir(&lib).with_context(|| format!("listing {}", lib.display()))? {
        let path = entry?.path().join(name);
        let python = path
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n.to_string_lossy().starts_with("python3"));
        if python && path.is_file() {
            found.push(path);
        }
    }
    Ok(found)
}

/// Clears every setuid and setgid bit: the agent's commands run as root
/// anyway, and the bits only widen what a non-root process could do.
fn strip_setid(tree: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![tree.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let mode = entry.metadata()?.permissions().mode();
                if mode & 0o6000 != 0 {
                    let cleared = fs::Permissions::from_mode(mode & !0o6000);
                    fs::set_permissions(entry.path(), cleared)?;
                }
            }
        }
    }
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
