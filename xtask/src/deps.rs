//! The Debian packages the project needs on the host, installed when we
//! are root and named in one `apt-get` line otherwise.

use std::process::Command;

use anyhow::{Result, bail};

use crate::proc;

/// Packages to run VMs, to format named sandboxes' disks (e2fsprogs), and
/// python3 for the tests' fake VM monitor.
const RUNTIME: &[&str] = &["qemu-system-x86", "e2fsprogs", "python3"];
/// Packages to build the kernel, the rootfs and its image.
const BUILD: &[&str] = &[
    "linux-source-6.1",
    "build-essential",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
    "xz-utils",
    "mmdebstrap",
    "debian-archive-keyring",
    "erofs-utils",
    "curl",
    "ca-certificates",
];

/// Packages for the web UI's tests in a real browser (fonts-dejavu-core
/// so its screenshots have text).
const UI_TEST: &[&str] = &["chromium", "fonts-dejavu-core"];

/// Packages for the venv of the client libraries the tests use.
const CLIENT_TEST: &[&str] = &["python3-venv"];

/// Packages to build and check the .deb (dpkg-shlibdeps is in
/// build-essential's dpkg-dev).
const PACKAGE: &[&str] = &["lintian", "man-db"];

/// Makes sure every package is installed.
pub fn ensure() -> Result<()> {
    let missing: Vec<&str> = RUNTIME
        .iter()
        .chain(BUILD)
        .chain(PACKAGE)
        .chain(UI_TEST)
        .chain(CLIENT_TEST)
        .copied()
        .filter(|pkg| !installed(pkg))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let line = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !is_root() {
        bail!("missing Debian packages; install them with:\n  sudo {line}");
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    proc::run(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    proc::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"install ok installed"))
}

/// Whether this process runs as root (the owner of `/proc/self`).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `dpkg-query`'s version of an installed package.
pub fn version(pkg: &str) -> Result<String> {
    proc::capture(Command::new("dpkg-query").args(["-W", "-f=${Version}", pkg]))
}
