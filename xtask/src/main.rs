//! `cargo xtask`: build the VM assets, run capsem, test, benchmark.
//!
//! Nothing to install beyond cargo: the Debian packages the build needs are
//! installed when running as root (else named in one `apt-get` line).

#![forbid(unsafe_code)]

mod assets;
mod bench;
mod cache;
mod deps;
mod dist;
mod fixture;
mod initramfs;
mod kernel;
mod node;
mod proc;
mod rootfs;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run, test and benchmark Capsem")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the kernel, initramfs and rootfs (cached by their inputs).
    BuildAssets,
    /// Build everything needed, then run `capsem ARGS...`.
    Run {
        /// Arguments for capsem.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install what is missing, build, lint and run every test, then build
    /// the .deb and check it installed into a fresh root.
    Test,
    /// Build the .deb (target/dist/capsem_VERSION_amd64.deb) with the
    /// assets, completions and manual pages.
    Dist(dist::DistArgs),
    /// Measure cold start and memory against bare QEMU; writes JSON.
    Bench(bench::BenchArgs),
    /// Copy a real session index, scrubbed, to the test fixtures.
    UpdateFixture(fixture::FixtureArgs),
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// `cargo` with the workspace as its directory and the current assets
/// compiled into capsem.
pub fn cargo(current_json: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace())
        .env("CAPSEM_MANIFEST", current_json);
    cmd
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::BuildAssets => deps::ensure().and_then(|()| assets::build()).map(|_| 0),
        Task::Run { args } => run(&args),
        Task::Test => test().map(|()| 0),
        Task::Dist(args) => deps::ensure().and_then(|()| dist::run(&args)).map(|()| 0),
        Task::Bench(args) => bench::run(&args).map(|()| 0),
        Task::UpdateFixture(args) => fixture::run(&args).map(|()| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Builds assets and capsem, then runs capsem; returns its exit code.
fn run(args: &[String]) -> Result<i32> {
    deps::ensure()?;
    let current = assets::build()?;
    proc::run(cargo(&current).args(["build", "--locked", "-q", "-p", "capsem"]))?;
    let status = Command::new(workspace().join("target/debug/capsem"))
        .args(args)
        .status()?;
    Ok(status.code().unwrap_or(125))
}

fn test() -> Result<()> {
    deps::ensure()?;
    let current = assets::build()?;
    proc::run(cargo(&current).args(["fmt", "--all", "--check"]))?;
    proc::run(cargo(&current).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    proc::run(cargo(&current).args(["test", "--workspace", "--locked"]))?;
    dist::check(&dist::build(&current)?)
}
