//! The client libraries the integration tests drive capsem with (the
//! official Python MCP SDK), in a venv made from
//! `tests/clients/requirements.txt` (pinned with hashes) by Debian's
//! python3, cached by the hash of that file.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::cache::{self, KeyBuilder};
use crate::{proc, workspace};

/// Bump when the steps below change.
const RECIPE: u32 = 1;
/// Where the tests find the venv (else in `clients.current`).
pub const ENV: &str = "CAPSEM_TEST_CLIENTS";
const PYTHON: &str = "/usr/bin/python3";

/// Builds the venv when its requirements changed; returns its directory
/// and records it in `clients.current` for tests run outside xtask.
pub fn build() -> Result<PathBuf> {
    let requirements = workspace().join("tests/clients/requirements.txt");
    let version = proc::capture(Command::new(PYTHON).arg("--version"))?;
    let mut key = KeyBuilder::new("clients", RECIPE);
    key.add("python", version.trim().as_bytes())
        .file(&requirements)?;
    let log = cache::root().join("logs/clients.log");
    fs::create_dir_all(log.parent().expect("logs/ has a parent"))?;
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
        .with_context(|| format!("pip install failed (log: {})", log.display()))
    })?;
    cache::point("clients.current", &entry)?;
    Ok(entry)
}
