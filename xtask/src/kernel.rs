//! The guest kernel: Debian's `linux-source-6.1`, `allnoconfig` plus the
//! checked-in fragment `images/kernel/capsem.config`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cache::{self, KeyBuilder};
use crate::{deps, proc, workspace};

/// Bump when the recipe below changes the kernel it produces.
const RECIPE: u32 = 2;
const SOURCE_PACKAGE: &str = "linux-source-6.1";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

/// The config fragment.
pub fn fragment() -> PathBuf {
    workspace().join("images/kernel/capsem.config")
}

/// Builds (or finds) the kernel; returns its cache directory holding
/// `vmlinux` and `kernel.config`.
pub fn build(log_dir: &Path) -> Result<PathBuf> {
    let gcc = proc::capture(Command::new("gcc").arg("--version"))?;
    let key = KeyBuilder::new("kernel", RECIPE)
        .file(&fragment())?
        .add("source", deps::version(SOURCE_PACKAGE)?.as_bytes())
        .add("gcc", gcc.as_bytes())
        .finish();
    cache::get_or_build("kernel", &key, |out| {
        let log = log_dir.join("kernel.log");
        compile(out, &log)
    })
}

fn compile(out: &Path, log: &Path) -> Result<()> {
    let tree = out.join("src");
    fs::create_dir_all(&tree)?;
    proc::run_logged(
        Command::new("tar")
            .args(["xJf", SOURCE_TARBALL, "--strip-components=1", "-C"])
            .arg(&tree),
        log,
    )?;
    // Fixed build identity, so the same inputs give the same bytes.
    let make = |args: &[&str]| {
        let mut cmd = Command::new("make");
        cmd.current_dir(&tree)
            .arg("ARCH=x86_64")
            .args(args)
            .env("KBUILD_BUILD_TIMESTAMP", "1970-01-01")
            .env("KBUILD_BUILD_USER", "capsem")
            .env("KBUILD_BUILD_HOST", "capsem")
            .env("KBUILD_BUILD_VERSION", "1");
        cmd
    };
    proc::run_logged(
        make(&["allnoconfig"]).env("KCONFIG_ALLCONFIG", fragment()),
        log,
    )?;
    let config = tree.join(".config");
    check_config(
        &fs::read_to_string(fragment())?,
        &fs::read_to_string(&config)?,
    )?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    proc::run_logged(&mut make(&[&format!("-j{jobs}"), "vmlinux"]), log)?;
    fs::copy(tree.join("vmlinux"), out.join("vmlinux")).context("copying vmlinux")?;
    fs::copy(&config, out.join("kernel.config")).context("copying .config")?;
    fs::remove_dir_all(&tree).context("removing the kernel build tree")
}

/// Parses `CONFIG_X=v` and `# CONFIG_X is not set` lines.
pub fn parse_config(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if let Some(name) = line
                .strip_prefix("# ")
                .and_then(|rest| rest.strip_suffix(" is not set"))
            {
                return Some((name.to_owned(), "n".to_owned()));
            }
            let (name, value) = line.split_once('=')?;
            name.starts_with("CONFIG_")
                .then(|| (name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Fails unless every option of the fragment survived Kconfig: a dropped
/// dependency would otherwise silently change the kernel.
pub fn check_config(fragment: &str, config: &str) -> Result<()> {
    let config = parse_config(config);
    let wrong: Vec<String> = parse_config(fragment)
        .into_iter()
        .filter_map(|(name, want)| {
            let got = config.get(&name).map_or("n", String::as_str);
            (got != want).then(|| format!("{name}: wanted {want}, got {got}"))
        })
        .collect();
    if !wrong.is_empty() {
        bail!(
            "the kernel config lost options of the fragment:\n  {}",
            wrong.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_changed_options_are_reported() {
        let fragment = "# comment\nCONFIG_A=y\nCONFIG_B=n\nCONFIG_C=y\n";
        let config = "CONFIG_A=y\n# CONFIG_C is not set\n";
        let err = check_config(fragment, config).unwrap_err().to_string();
        assert!(err.contains("CONFIG_C: wanted y, got n"), "{err}");
        assert!(!err.contains("CONFIG_B"), "absent counts as n: {err}");
        assert!(check_config("CONFIG_A=y\n", config).is_ok());
    }
}
