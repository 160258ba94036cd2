//! `capsem shell` (and bare `capsem` on a terminal): an interactive login
//! shell in a fresh VM.

use std::time::Instant;

use crate::cli::{ExecArgs, RunArgs, RunOptions};
use crate::exit::Failure;
use crate::{cmd, terminal};

/// Runs bash as a login shell on a guest terminal with the run `options`
/// (`-e`, `--timeout`): in a fresh VM, or in the running sandbox `name`.
pub fn run(options: RunOptions, name: Option<String>, started: Instant) -> i32 {
    if !terminal::stdin_is_terminal() {
        return Failure::new("capsem shell needs a terminal, and stdin is not one")
            .hint("to run a script, pipe it into `capsem` with no arguments; for one command, `capsem run -- CMD`")
            .report();
    }
    let command = vec!["bash".to_owned(), "--login".to_owned()];
    if let Some(name) = name {
        let args = ExecArgs {
            options: options.clone(),
            tty: true,
            name,
            command,
        };
        return cmd::run::block_on(&options, cmd::sandbox::exec(args));
    }
    let args = RunArgs {
        options,
        tty: true,
        workspace: Default::default(),
        command,
    };
    cmd::run::run(args, started, cmd::run::Output::Raw)
}
