//! `capsem`: run a command in a throw-away, hardened Linux microVM.
//!
//! The binary is the command line and glue; the work is in `capsem-core`.
//! Exit codes come from one place ([`exit`]).

#![forbid(unsafe_code)]

mod cli;
mod cmd;
mod embedded;
mod exit;
mod report;
mod terminal;

use std::time::Instant;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{AssetsAction, Cli, GlobalArgs, Subcmd};
use crate::cmd::run::Output;

fn main() {
    let started = Instant::now();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { exit::FAILURE } else { 0 });
        }
    };
    init_logging(&cli.global);
    let code = match cli.subcommand {
        None if cli.run.command.is_empty() && terminal::stdin_is_terminal() => {
            cmd::shell::run(cli.run, &cli.global, started)
        }
        None => cmd::run::run(cli.run, &cli.global, started, Output::Raw),
        Some(Subcmd::Shell) => cmd::shell::run(cli.run, &cli.global, started),
        Some(Subcmd::Run(args)) => {
            cmd::run::run(args.with_outer(cli.run), &cli.global, started, Output::Raw)
        }
        Some(Subcmd::Assets {
            action: AssetsAction::Verify,
        }) => cmd::assets::verify().unwrap_or_else(|f| f.report()),
        Some(Subcmd::Version) => cmd::version::print().unwrap_or_else(|f| f.report()),
        Some(Subcmd::Doctor { filter, exit_first }) => {
            let args =
                cmd::doctor::run_args(filter, exit_first, cli.global.verbose).with_outer(cli.run);
            cmd::run::run(args, &cli.global, started, Output::Report)
        }
        Some(Subcmd::Settings { action }) => {
            cmd::settings::run(action).unwrap_or_else(|f| f.report())
        }
        Some(Subcmd::Sessions {
            json,
            limit,
            action,
        }) => cmd::sessions::run(action, json, limit).unwrap_or_else(|f| f.report()),
        Some(Subcmd::Net { action }) => cmd::net::run(action).unwrap_or_else(|f| f.report()),
    };
    // Exit at once: a thread reading a terminal stdin may still be blocked,
    // and waiting for it would hang until the user pressed a key.
    std::process::exit(code);
}

/// capsem's own messages go to stderr as `capsem: ...`; `-v` adds the boot
/// phases, `-q` leaves only errors, `CAPSEM_LOG` overrides both.
fn init_logging(global: &GlobalArgs) {
    let default = if global.verbose {
        "info"
    } else if global.quiet {
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
