//! `cargo xtask`: build the VM assets, run capsem, test, benchmark.
//!
//! Nothing to install beyond cargo: the Debian packages the build needs are
//! installed when running as root (else named in one `apt-get` line).

#![forbid(unsafe_code)]

mod assets;
mod bench;
mod cache;
mod clients;
mod deps;
mod dist;
mod fixture;
mod initramfs;
mod kernel;
mod node;
mod proc;
mod rootfs;
mod ui;

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
    /// Build the web UI (`ui/`; cached by its sources). Every task that
    /// builds capsem builds it first.
    BuildUi,
    /// Install the client libraries the tests use (a venv in the cache,
    /// from `tests/clients/requirements.txt`).
    BuildClients,
    /// Serve `ui/` with Vite's dev server (hot reload), its API calls
    /// forwarded to a running `capsem ui` (`CAPSEM_UI_PORT`, default 7317).
    UiDev,
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

/// What capsem compiles in: the VM assets' manifest and the web UI.
pub struct Inputs {
    /// `current.json` of the asset set.
    pub current_json: PathBuf,
    /// The UI's cache entry (its `dist/` is embedded).
    pub ui: PathBuf,
}

impl Inputs {
    /// Builds whatever of them is missing.
    pub fn build() -> Result<Inputs> {
        Ok(Inputs {
            current_json: assets::build()?,
            ui: ui::build()?,
        })
    }
}

/// `cargo` with the workspace as its directory and the current assets and
/// UI compiled into capsem.
pub fn cargo(inputs: &Inputs) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace())
        .env("CAPSEM_MANIFEST", &inputs.current_json)
        .env("CAPSEM_UI_DIST", inputs.ui.join("dist"));
    cmd
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::BuildAssets => deps::ensure().and_then(|()| assets::build()).map(|_| 0),
        Task::BuildUi => ui::build().map(|_| 0),
        Task::BuildClients => clients::build().map(|_| 0),
        Task::UiDev => ui::dev(),
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
    let inputs = Inputs::build()?;
    proc::run(cargo(&inputs).args(["build", "--locked", "-q", "-p", "capsem"]))?;
    let status = Command::new(workspace().join("target/debug/capsem"))
        .args(args)
        .status()?;
    Ok(status.code().unwrap_or(125))
}

fn test() -> Result<()> {
    deps::ensure()?;
    let inputs = Inputs::build()?;
    proc::run(cargo(&inputs).args(["fmt", "--all", "--check"]))?;
    proc::run(cargo(&inputs).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    let clients = clients::build()?;
    proc::run(cargo(&inputs).env(clients::ENV, &clients).args([
        "test",
        "--workspace",
        "--locked",
    ]))?;
    dist::check(&dist::build(&inputs)?)
}
