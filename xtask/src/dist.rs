//! `cargo xtask dist`: the `.deb` (built by cargo-deb from
//! `[package.metadata.deb]` in `crates/capsem/Cargo.toml`), and the check
//! that installs it into a fresh root and uses it from there.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use capsem_core::assets::{CurrentAssets, MANIFEST_FILE};

use crate::cache::{self, KeyBuilder};
use crate::{Inputs, cargo, proc, workspace};

/// The cargo-deb we build packages with, installed into the cache.
const CARGO_DEB: &str = "3.8.0";

/// `cargo xtask dist`'s options.
#[derive(clap::Args)]
pub struct DistArgs {
    /// Then install the package into a fresh root and check it there.
    #[arg(long)]
    pub check: bool,
}

/// Builds the assets and the package (and checks it when asked).
pub fn run(args: &DistArgs) -> Result<()> {
    let deb = build(&Inputs::build()?)?;
    if args.check {
        check(&deb)?;
    }
    Ok(())
}

/// Builds `target/dist/capsem_VERSION_amd64.deb` from the asset set and UI of
/// `inputs` and returns its path.
pub fn build(inputs: &Inputs) -> Result<PathBuf> {
    let current = CurrentAssets::parse(&fs::read_to_string(&inputs.current_json)?)
        .context("parsing current.json")?;
    proc::run(cargo(inputs).args(["build", "--release", "--locked", "-q", "-p", "capsem"]))?;
    let dist = workspace().join("target/dist");
    let stage = dist.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    stage_assets(&current, &stage.join("assets"))?;
    stage_generated(&target_dir().join("release/capsem"), &stage)?;
    let out = proc::capture(
        Command::new(cargo_deb()?)
            .current_dir(workspace())
            .args(["-p", "capsem", "--no-build", "--no-strip", "--locked", "-q"])
            // The rootfs is already lz4-compressed; a slow xz gains little.
            .args(["--fast", "--compress-system", "--output"])
            .arg(&dist),
    )?;
    let deb = PathBuf::from(out.trim());
    ensure!(deb.is_file(), "cargo-deb did not name its package: {out}");
    let size = fs::metadata(&deb)?.len();
    eprintln!(
        "xtask: package ready ({} MiB): {}",
        size >> 20,
        deb.display()
    );
    Ok(deb)
}

/// Cargo's target directory (where `--release` puts capsem).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// The pinned files, their manifest and the kernel's config.
fn stage_assets(current: &CurrentAssets, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    let manifest = &current.manifest;
    let files = manifest
        .entries()
        .map(|(_, entry)| entry.file.as_str())
        .into_iter()
        .chain([MANIFEST_FILE, manifest.kernel_config.as_str()]);
    for file in files {
        cache::link_or_copy(&current.dir.join(file), &to.join(file))?;
    }
    Ok(())
}

/// Completions and manual pages, from the clap definitions of `capsem`.
fn stage_generated(capsem: &Path, stage: &Path) -> Result<()> {
    let completions = stage.join("completions");
    fs::create_dir_all(&completions)?;
    for (shell, file) in [
        ("bash", "capsem.bash"),
        ("zsh", "_capsem"),
        ("fish", "capsem.fish"),
    ] {
        let script = proc::capture(Command::new(capsem).args(["completions", shell]))?;
        fs::write(completions.join(file), script)?;
    }
    let man = stage.join("man");
    proc::run(Command::new(capsem).args(["man", "--dir"]).arg(&man))?;
    // Debian wants manual pages gzipped, and reproducibly (-n: no name, no time).
    for page in fs::read_dir(&man)? {
        proc::run(Command::new("gzip").args(["-9n"]).arg(page?.path()))?;
    }
    Ok(())
}

/// The cargo-deb binary, installed into the cache the first time.
fn cargo_deb() -> Result<PathBuf> {
    let key = KeyBuilder::new("cargo-deb", 1)
        .add("version", CARGO_DEB.as_bytes())
        .finish();
    let log = cache::root().join("logs/cargo-deb.log");
    let dir = cache::get_or_build("tools", &key, |out| {
        eprintln!(
            "xtask: installing cargo-deb {CARGO_DEB} (log: {})",
            log.display()
        );
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        proc::run_logged(
            Command::new(cargo)
                .args(["install", "cargo-deb", "--locked", "--version"])
                .arg(format!("={CARGO_DEB}"))
                .arg("--root")
                .arg(out),
            &log,
        )
    })?;
    Ok(dir.join("bin/cargo-deb"))
}

/// Installs `deb` with dpkg into a fresh root, uses the installed capsem
/// from there (a VM, its assets, its manual, its completions), removes the
/// package, and runs lintian on it.
pub fn check(deb: &Path) -> Result<()> {
    let root = workspace().join("target/dist/root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    let admin = root.join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        fs::create_dir_all(admin.join(dir))?;
    }
    for file in ["status", "available"] {
        fs::write(admin.join(file), "")?;
    }
    let dpkg = |args: &[&str]| {
        let mut cmd = Command::new("dpkg");
        cmd.arg("--root").arg(&root).args(["--log", "/dev/null"]);
        // Minimal images exclude manual pages in /etc/dpkg/dpkg.cfg.d.
        cmd.arg("--path-include=*");
        // The dependencies are the host's; dpkg only sees the empty root.
        cmd.args(["--force-depends"]).args(args);
        cmd
    };
    proc::run(dpkg(&["-i"]).arg(deb))?;
    let home = root.join("home/user");
    fs::create_dir_all(&home)?;
    let installed = Installed {
        root: root.clone(),
        home: home.clone(),
    };
    installed.uses_its_own_assets()?;
    installed.boots_a_vm()?;
    installed.has_manual_and_completions()?;
    installed.refuses_swapped_images()?;
    eprintln!("xtask: package: dpkg -r");
    proc::run(&mut dpkg(&["-r", "capsem"]))?;
    ensure!(
        !root.join("usr/bin/capsem").exists() && !root.join("usr/lib/capsem").exists(),
        "dpkg -r left capsem's files behind"
    );
    ensure!(
        home.join(".capsem").is_dir(),
        "dpkg -r removed the user's ~/.capsem"
    );
    lintian(deb)?;
    proc::run(
        Command::new("apt-get")
            .args(["install", "-s", "-q"])
            .arg(deb)
            .stdout(std::process::Stdio::null()),
    )
    .context("apt cannot resolve the package's dependencies")?;
    fs::remove_dir_all(&root)?;
    eprintln!("xtask: package checks passed");
    Ok(())
}

/// capsem as installed into a root, run as a user with a fresh home.
struct Installed {
    root: PathBuf,
    home: PathBuf,
}

impl Installed {
    fn capsem(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.root.join("usr/bin/capsem"));
        cmd.args(args).env("HOME", &self.home).env("NO_COLOR", "1");
        for (var, _) in std::env::vars_os() {
            let name = var.to_string_lossy();
            if name.starts_with("CAPSEM_") || name.starts_with("XDG_") {
                cmd.env_remove(&var);
            }
        }
        cmd
    }

    fn output(&self, args: &[&str]) -> Result<String> {
        eprintln!("xtask: package: capsem {}", args.join(" "));
        proc::capture(&mut self.capsem(args))
    }

    /// `capsem version` names the installed directory, and the files there
    /// match the hashes compiled in.
    fn uses_its_own_assets(&self) -> Result<()> {
        let version: serde_json::Value =
            serde_json::from_str(&self.output(&["version", "--json"])?)?;
        let data = &version["data"];
        let wanted = self.root.join("usr/lib/capsem/assets");
        ensure!(
            data["asset_source"] == "installed"
                && data["asset_dir"] == wanted.to_str().unwrap_or(""),
            "the installed capsem does not use {}: {data}",
            wanted.display()
        );
        let verified = self.output(&["assets", "verify"])?;
        ensure!(
            verified.lines().count() == 3,
            "capsem assets verify: {verified}"
        );
        Ok(())
    }

    fn boots_a_vm(&self) -> Result<()> {
        let uname = self.output(&["-q", "uname", "-a"])?;
        ensure!(
            uname.starts_with("Linux "),
            "capsem uname -a printed {uname:?}"
        );
        Ok(())
    }

    /// An image changed after installation is refused, as a tampered
    /// build is: the hashes are the binary's, not the directory's.
    fn refuses_swapped_images(&self) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let initramfs = self.root.join("usr/lib/capsem/assets/initramfs.cpio");
        fs::OpenOptions::new()
            .write(true)
            .open(&initramfs)?
            .write_all_at(b"X", 0)?;
        for args in [&["assets", "verify"][..], &["-q", "true"]] {
            eprintln!(
                "xtask: package: capsem {} (swapped initramfs)",
                args.join(" ")
            );
            let out = self.capsem(args).output()?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            ensure!(
                !out.status.success() && stderr.contains("does not match this capsem build"),
                "capsem {} took a swapped initramfs: {stderr}",
                args.join(" ")
            );
        }
        Ok(())
    }

    fn has_manual_and_completions(&self) -> Result<()> {
        let man1 = self.root.join("usr/share/man/man1");
        for page in ["capsem.1.gz", "capsem-doctor.1.gz", "capsem-service.1.gz"] {
            let text = proc::capture(
                Command::new("man")
                    .arg("-l")
                    .arg(man1.join(page))
                    .env("MANPAGER", "cat")
                    .env("MANWIDTH", "80"),
            )?;
            ensure!(text.contains("capsem"), "man -l {page} printed {text:?}");
        }
        let bash = self
            .root
            .join("usr/share/bash-completion/completions/capsem");
        let complete = proc::capture(
            Command::new("bash")
                .arg("-c")
                .arg(r#"source "$1" && complete -p capsem"#)
                .arg("bash")
                .arg(&bash),
        )?;
        ensure!(
            complete.contains("capsem"),
            "bash completion registers nothing: {complete:?}"
        );
        for file in [
            "usr/share/zsh/vendor-completions/_capsem",
            "usr/share/fish/vendor_completions.d/capsem.fish",
            "usr/lib/systemd/user/capsem.service",
            "usr/share/doc/capsem/copyright",
        ] {
            ensure!(self.root.join(file).is_file(), "the package lacks /{file}");
        }
        Ok(())
    }
}

/// lintian with no errors (warnings are printed, not fatal).
fn lintian(deb: &Path) -> Result<()> {
    eprintln!("xtask: package: lintian");
    let status = Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .arg(deb)
        .status()
        .context("starting lintian")?;
    if !status.success() {
        bail!("lintian found errors in {} ({status})", deb.display());
    }
    Ok(())
}
