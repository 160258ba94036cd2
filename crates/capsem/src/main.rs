//! `capsem`: run a command in a throw-away, hardened Linux microVM.
//!
//! The binary is the command line and glue; the work is in `capsem-core`.
//! Exit codes come from one place ([`exit`]), and what capsem itself
//! prints on stdout goes through one place too ([`out`]), so that a closed
//! pipe (`capsem net log | head -1`) ends it quietly.

#![forbid(unsafe_code)]

mod cli;
mod cmd;
mod embedded;
mod exit;
mod out;
mod report;
mod terminal;

use std::time::Instant;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{AssetsAction, Cli, RunOptions, Subcmd};
use crate::cmd::run::Output;

fn main() {
    let started = Instant::now();
    let cli = match Cli::try_parse().and_then(|cli| cli::check(&cli).map(|()| cli)) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { exit::FAILURE } else { 0 });
        }
    };
    let outer = cli.run;
    let code = match cli.subcommand {
        None if outer.command.is_empty() && terminal::stdin_is_terminal() => {
            cmd::shell::run(outer.options, None, started)
        }
        None => cmd::run::run(outer, started, Output::Raw),
        Some(Subcmd::Shell(args)) => {
            cmd::shell::run(args.options.with_outer(outer.options), args.name, started)
        }
        Some(Subcmd::Exec(mut args)) => {
            args.options = args.options.with_outer(outer.options);
            let options = args.options.clone();
            cmd::run::block_on(&options, cmd::sandbox::exec(args))
        }
        Some(Subcmd::Create(args)) => sandboxes(cmd::sandbox::create(args)),
        Some(Subcmd::Ls { json }) => sandboxes(cmd::sandbox::list(json)),
        Some(Subcmd::Logs { follow, name }) => sandboxes(cmd::sandbox::logs(&name, follow)),
        Some(Subcmd::Cp { follow, src, dest }) => sandboxes(cmd::copy::run(&src, &dest, follow)),
        Some(Subcmd::Start { name }) => sandboxes(cmd::sandbox::lifecycle(&name, "start")),
        Some(Subcmd::Stop { name }) => sandboxes(cmd::sandbox::lifecycle(&name, "stop")),
        Some(Subcmd::Suspend { name }) => sandboxes(cmd::sandbox::lifecycle(&name, "suspend")),
        Some(Subcmd::Resume { name }) => sandboxes(cmd::sandbox::lifecycle(&name, "resume")),
        Some(Subcmd::Rm { name, force }) => sandboxes(cmd::sandbox::remove(&name, force)),
        Some(Subcmd::Service { action }) => sandboxes(cmd::sandbox::service_cmd(action)),
        Some(Subcmd::Ui { no_open, port }) => sandboxes(cmd::ui::open(port, no_open)),
        Some(Subcmd::Mcp) => sandboxes(cmd::mcp::serve()),
        Some(Subcmd::E2b { port }) => sandboxes(cmd::e2b::serve(port)),
        Some(Subcmd::Supervise { name }) => {
            let options = RunOptions {
                verbose: true,
                ..RunOptions::default()
            };
            cmd::run::block_on(&options, cmd::sandbox::supervise(&name, started))
        }
        Some(Subcmd::Run(args)) => cmd::run::run(args.with_outer(outer), started, Output::Raw),
        Some(Subcmd::Doctor(args)) => cmd::doctor::run(args, outer.options, started),
        Some(Subcmd::Assets {
            action: AssetsAction::Verify { json },
        }) => reported(|| cmd::assets::verify(json)),
        Some(Subcmd::Version { json }) => reported(|| cmd::version::print(json)),
        Some(Subcmd::Settings { action }) => reported(|| cmd::settings::run(action)),
        Some(Subcmd::Sessions { list, action }) => reported(|| cmd::sessions::run(action, list)),
        Some(Subcmd::Net { action }) => reported(|| cmd::net::run(action)),
        Some(Subcmd::Diff { stat, json, id }) => {
            reported(|| cmd::workspace::diff(id.as_deref(), stat, json))
        }
        Some(Subcmd::Apply(args)) => reported(|| cmd::workspace::apply(args)),
        Some(Subcmd::Discard { id }) => reported(|| cmd::workspace::discard(id.as_deref())),
        Some(Subcmd::Completions { shell }) => reported(|| cmd::help::completions(shell)),
        Some(Subcmd::Man { dir }) => reported(|| cmd::help::man(dir.as_deref())),
    };
    // Exit at once: a thread reading a terminal stdin may still be blocked,
    // and waiting for it would hang until the user pressed a key.
    std::process::exit(code);
}

/// The exit code of a client of the service, its failure reported.
fn sandboxes(command: impl std::future::Future<Output = Result<i32, exit::Failure>>) -> i32 {
    cmd::run::block_on(&RunOptions::default(), command)
}

/// The exit code of a subcommand that runs no VM, its failure reported.
fn reported(command: impl FnOnce() -> Result<i32, exit::Failure>) -> i32 {
    init_logging(&RunOptions::default());
    command().unwrap_or_else(|f| f.report())
}

/// capsem's own messages go to stderr as `capsem: ...`; `-v` adds the boot
/// phases, `-q` leaves only errors, `CAPSEM_LOG` overrides both.
pub fn init_logging(options: &RunOptions) {
    let default = if options.verbose {
        "info"
    } else if options.quiet {
        "error"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_env(capsem_core::env::CAPSEM_LOG)
        .unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_level(false)
        .with_ansi(false)
        .fmt_fields(tracing_subscriber::fmt::format::debug_fn(
            |w, field, value| {
                if field.name() == "message" {
                    write!(w, "capsem: {value:?}")
                } else {
                    write!(w, " {}={value:?}", field.name())
                }
            },
        ))
        .init();
}
