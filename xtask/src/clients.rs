//! The client libraries the integration tests drive capsem with, cached
//! by the hash of what pins them: the official Python SDKs (MCP, E2B) in a
//! venv made from `tests/clients/requirements.txt` (pinned with hashes) by
//! Debian's python3, and E2B's JS SDK in `js/` by `npm ci` from
//! `tests/clients/js/` with the pinned Node (`bin/node`), its test script
//! beside it so that it resolves the installed packages.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::cache::{self, KeyBuilder};
use crate::node::Toolchain;
use crate::{proc, workspace};

/// What `js/` is made from, in `tests/clients/js/`.
const JS_FILES: [&str; 3] = ["package.json", "package-lock.json", "e2b_client.mjs"];

/// Bump when the steps below change.
const RECIPE: u32 = 2;
/// Where the tests find the venv (else in `clients.current`).
pub const ENV: &str = "CAPSEM_TEST_CLIENTS";
const PYTHON: &str = "/usr/bin/python3";

/// Builds the venv when its requirements changed; returns its directory
/// and records it in `clients.current` for tests run outside xtask.
pub fn build() -> Result<PathBuf> {
    let requirements = workspace().join("tests/clients/requirements.txt");
    let version = proc::capture(Command::new(PYTHON).arg("--version"))?;
    let js = workspace().join("tests/clients/js");
    let mut key = KeyBuilder::new("clients", RECIPE);
    key.add("python", version.trim().as_bytes())
        .file(&requirements)?
        .file(&workspace().join("images/rootfs/runtimes.toml"))?;
    for name in JS_FILES {
        key.file(&js.join(name))?;
    }
    let log = cache::root().join("logs/clients.log");
    fs::create_dir_all(log.parent().expect("logs/ has a parent"))?;
    let toolchain = Toolchain::get(&log)?;
    let entry = cache::get_or_build("clients", &key.finish(), |out| {
        eprintln!(
            "xtask: installing the tests' client libraries (log: {})",
            log.display()
        );
        let venv = out.join("venv");
        proc::run_logged(Command::new(PYTHON).arg("-m").arg("venv").arg(&venv), &log)?;
        let pip = venv.join("bin/pip");
        proc::run_logged(
            Command::new(&pip)
                .args(["install", "--quiet", "--no-input", "--require-hashes", "-r"])
                .arg(&requirements),
            &log,
        )
        .with_context(|| format!("pip install failed (log: {})", log.display()))?;
        let to = out.join("js");
        fs::create_dir_all(&to)?;
        for name in JS_FILES {
            fs::copy(js.join(name), to.join(name))?;
        }
        let home = out.join(".npm-home");
        proc::run_logged(
            toolchain.npm(&to, &home).args(["ci", "--ignore-scripts"]),
            &log,
        )
        .with_context(|| format!("npm ci failed (log: {})", log.display()))?;
        fs::remove_dir_all(&home)?;
        fs::create_dir_all(out.join("bin"))?;
        std::os::unix::fs::symlink(toolchain.node(), out.join("bin/node"))?;
        Ok(())
    })?;
    cache::point("clients.current", &entry)?;
    Ok(entry)
}
