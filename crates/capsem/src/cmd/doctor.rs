//! `capsem doctor`: the in-VM diagnostics, run like any other command.

use crate::cli::RunArgs;

/// The run of `capsem-doctor` with pytest's options.
pub fn run_args(filter: Option<String>, exit_first: bool, verbose: bool) -> RunArgs {
    let mut command = vec!["capsem-doctor".to_owned()];
    if let Some(expr) = filter {
        command.extend(["-k".to_owned(), expr]);
    }
    if exit_first {
        command.push("-x".to_owned());
    }
    if verbose {
        command.push("-v".to_owned());
    }
    RunArgs {
        command,
        ..RunArgs::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_pytest_arguments() {
        let args = run_args(Some("sandbox and not curl".into()), true, true);
        assert_eq!(
            args.command,
            ["capsem-doctor", "-k", "sandbox and not curl", "-x", "-v"]
        );
        assert_eq!(run_args(None, false, false).command, ["capsem-doctor"]);
    }
}
