//! The initramfs: the statically linked agent as `/init`, and `/dev/console`
//! so that PID 1 starts with a console on its stdio.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cache::{self, KeyBuilder};
use crate::{proc, workspace};

/// Bump when the recipe below changes the initramfs it produces.
const RECIPE: u32 = 1;
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds (or finds) the initramfs; returns its cache directory holding
/// `initramfs.cpio`.
pub fn build(log_dir: &Path) -> Result<PathBuf> {
    let root = workspace();
    let rustc = proc::capture(Command::new("rustc").arg("-vV"))?;
    let key = KeyBuilder::new("initramfs", RECIPE)
        .tree(&root.join("crates/capsem-agent"))?
        .tree(&root.join("crates/capsem-proto"))?
        .file(&root.join("Cargo.lock"))?
        .file(&root.join("Cargo.toml"))?
        .add("rustc", rustc.as_bytes())
        .finish();
    cache::get_or_build("initramfs", &key, |out| {
        let agent = build_agent(&log_dir.join("agent.log"))?;
        let bytes = fs::read(&agent).with_context(|| format!("reading {}", agent.display()))?;
        let mut cpio = Vec::new();
        write_newc(&mut cpio, &bytes)?;
        fs::write(out.join("initramfs.cpio"), cpio).context("writing initramfs.cpio")
    })
}

/// Compiles the agent as a static executable; returns its path.
fn build_agent(log: &Path) -> Result<PathBuf> {
    let root = workspace();
    let target_dir = root.join("target/agent");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    proc::run_logged(
        Command::new(cargo)
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "--locked",
                "-p",
                "capsem-agent",
                "--target",
                TARGET,
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            // With an explicit --target these flags reach only the agent, not
            // build scripts or proc macros, which cannot be static.
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
        log,
    )?;
    Ok(target_dir.join(TARGET).join("release/capsem-agent"))
}

/// A cpio "newc" entry header field: eight hex digits.
fn field(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(format!("{value:08x}").as_bytes());
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Appends one entry. Timestamps are zero so the archive depends only on
/// its content.
fn entry(out: &mut Vec<u8>, ino: u64, name: &str, mode: u32, rdev: (u64, u64), data: &[u8]) {
    out.extend_from_slice(b"070701");
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    for value in [
        ino,
        u64::from(mode),
        0,
        0,
        nlink,
        0,
        data.len() as u64,
        0,
        0,
    ] {
        field(out, value);
    }
    field(out, rdev.0);
    field(out, rdev.1);
    field(out, name.len() as u64 + 1);
    field(out, 0);
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// Writes the whole archive: `/dev`, `/dev/console`, `/init`.
pub fn write_newc(out: &mut impl Write, init: &[u8]) -> Result<()> {
    let mut buf = Vec::with_capacity(init.len() + 1024);
    entry(&mut buf, 1, "dev", 0o040755, (0, 0), &[]);
    entry(&mut buf, 2, "dev/console", 0o020600, (5, 1), &[]);
    entry(&mut buf, 3, "init", 0o100755, (0, 0), init);
    entry(&mut buf, 0, "TRAILER!!!", 0, (0, 0), &[]);
    out.write_all(&buf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned_and_complete() {
        let mut archive = Vec::new();
        write_newc(&mut archive, b"#!init").unwrap();
        assert_eq!(archive.len() % 4, 0);
        // Each header is 110 bytes: magic and 13 fields of 8 hex digits.
        // "dev" takes 110 + 4 bytes, padded to 116.
        let console = &archive[116..];
        assert!(console.starts_with(b"070701"));
        let rdev = std::str::from_utf8(&console[6 + 9 * 8..6 + 11 * 8]).unwrap();
        assert_eq!(rdev, "0000000500000001");
        let text = String::from_utf8_lossy(&archive);
        let init = text.find("init\0").unwrap();
        assert_eq!(&text[init + 5..init + 5 + 1 + 6], "\0#!init");
        assert!(text.ends_with("TRAILER!!!\0\0\0\0"));
    }
}
