//! `capsem shell` (and bare `capsem` on a terminal): an interactive login
//! shell in a fresh VM.

use std::time::Instant;

use crate::cli::{GlobalArgs, RunArgs};
use crate::exit::Failure;
use crate::{cmd, terminal};

/// Runs bash as a login shell on a guest terminal; `outer` carries options
/// given before (`-e`, `--timeout`).
pub fn run(outer: RunArgs, global: &GlobalArgs, started: Instant) -> i32 {
    if !terminal::stdin_is_terminal() {
        return Failure::new("capsem shell needs a terminal, and stdin is not one")
            .hint("to run a script, pipe it into `capsem` with no arguments; for one command, `capsem run -- CMD`")
            .report();
    }
    let args = RunArgs {
        command: vec!["bash".to_owned(), "--login".to_owned()],
        tty: true,
        ..outer
    };
    cmd::run::run(args, global, started, cmd::run::Output::Raw)
}
