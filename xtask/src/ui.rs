//! The web UI (`ui/`): `npm ci`, `npm run check` and `npm run build` with
//! the pinned Node, cached by the hash of its sources like the VM assets.
//!
//! The cache entry is the built project: `dist/` (what capsem embeds),
//! `node_modules/` and `tests/` (the browser tests run from there) and
//! `bin/node`.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cache::{self, KeyBuilder};
use crate::node::Toolchain;
use crate::{proc, workspace};

/// Bump when the steps below change.
const RECIPE: u32 = 1;
/// What is built, never a source.
const SKIP: &[&str] = &["node_modules", "dist"];

/// Builds the UI when its sources changed; returns the cache entry and
/// records it in `ui.current` for builds outside `cargo xtask`.
pub fn build() -> Result<PathBuf> {
    let logs = cache::root().join("logs");
    fs::create_dir_all(&logs)?;
    let log = logs.join("ui.log");
    let toolchain = Toolchain::get(&log)?;
    let project = workspace().join("ui");
    let sources = cache::files_under(&project, SKIP)?;
    let mut key = KeyBuilder::new("ui", RECIPE);
    key.file(&workspace().join("images/rootfs/runtimes.toml"))?;
    for file in &sources {
        key.file(file)?;
    }
    let entry = cache::get_or_build("ui", &key.finish(), |out| {
        eprintln!("xtask: building the web UI (log: {})", log.display());
        for file in &sources {
            let to = out.join(file.strip_prefix(&project)?);
            fs::create_dir_all(to.parent().expect("a file has a parent"))?;
            fs::copy(file, &to).with_context(|| format!("copying {}", file.display()))?;
        }
        let home = out.join(".npm-home");
        for args in [&["ci"][..], &["run", "check"], &["run", "build"]] {
            proc::run_logged(npm(&toolchain, out, &home).args(args), &log).with_context(|| {
                format!(
                    "npm {} in ui/ failed (log: {})",
                    args.join(" "),
                    log.display()
                )
            })?;
        }
        fs::remove_dir_all(&home)?;
        fs::create_dir_all(out.join("bin"))?;
        std::os::unix::fs::symlink(toolchain.node(), out.join("bin/node"))?;
        Ok(())
    })?;
    cache::point("ui.current", &entry)?;
    Ok(entry)
}

/// `cargo xtask ui-dev`: Vite's dev server on `ui/`'s sources, forwarding
/// the API to a running `capsem ui`.
pub fn dev() -> Result<i32> {
    let log = cache::root().join("logs/ui.log");
    let toolchain = Toolchain::get(&log)?;
    let project = workspace().join("ui");
    let home = cache::root().join("npm-home");
    if !project.join("node_modules").is_dir() {
        proc::run(npm(&toolchain, &project, &home).arg("ci"))?;
    }
    let status = npm(&toolchain, &project, &home)
        .args(["run", "dev"])
        .status()
        .context("running vite")?;
    Ok(status.code().unwrap_or(1))
}

/// npm with the pinned node first on `PATH` (npm scripts run `node`).
fn npm(
    toolchain: &Toolchain,
    dir: &std::path::Path,
    home: &std::path::Path,
) -> std::process::Command {
    let bin = toolchain
        .node()
        .parent()
        .expect("node is in bin/")
        .to_owned();
    let mut cmd = toolchain.npm(dir, home);
    cmd.env("PATH", format!("{}:/usr/bin:/bin", bin.display()));
    cmd
}
