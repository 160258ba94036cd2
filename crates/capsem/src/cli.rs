//! The command line.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const EXIT_STATUS: &str = "\
Exit status:
  N      the guest command's own exit status
  128+N  the guest command was killed by signal N
  124    --timeout expired; the VM was destroyed
  125    capsem itself failed (the message says why and what to do)
  126    the command exists but could not be run
  127    the command was not found in the guest";

/// Run a command in a throw-away, hardened Linux microVM.
///
/// Every run boots a fresh VM from pinned, verified images, runs the command
/// with its stdin, stdout and stderr connected to yours, and destroys the VM.
/// Nothing persists between runs, and the VM has no network.
///
/// One argument is a shell command line, run by `bash -c`:
///   capsem 'ls -la /proc/cpuinfo | head -3'
///
/// Several arguments are run as exactly that argument vector:
///   capsem echo "a  b"
///
/// Anything that is not a subcommand is a command to run, so `capsem uname -a`
/// is short for `capsem run -- uname -a`.
#[derive(Debug, Parser)]
#[command(
    name = "capsem",
    version,
    verbatim_doc_comment,
    override_usage = "capsem                       (an interactive shell)\n       \
                      capsem [OPTIONS] COMMAND [ARGS]...\n       \
                      capsem run [OPTIONS] -- COMMAND [ARGS]...\n       \
                      capsem shell | doctor | sessions | assets verify | version | help",
    after_help = EXIT_STATUS,
    subcommand_value_name = "COMMAND",
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub subcommand: Option<Subcmd>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Print nothing of capsem's own but errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Show boot phases with timings.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Subcmd {
    /// Run a command in a fresh VM (the default).
    Run(RunArgs),
    /// Open an interactive shell (bash, as a login shell) in a fresh VM.
    ///
    /// The same as `capsem` with no arguments on a terminal. The VM is
    /// destroyed when the shell exits, and capsem exits with its status.
    Shell,
    /// Run the in-VM diagnostics: is the sandbox really sealed, and does
    /// everything in it work?
    ///
    /// Boots a VM and runs its pytest suite (capsem-doctor): sandbox claims
    /// (no network, read-only system, no kernel extension, no services),
    /// utilities, runtimes, workflows and environment. Exits non-zero when
    /// a check fails. With -v, every check is listed.
    Doctor {
        /// Only run checks matching this pytest expression (e.g. sandbox).
        #[arg(short = 'k', value_name = "EXPR")]
        filter: Option<String>,
        /// Stop at the first failing check.
        #[arg(short = 'x', long = "exitfirst")]
        exit_first: bool,
    },
    /// Check the VM images against the hashes built into capsem.
    Assets {
        #[command(subcommand)]
        action: AssetsAction,
    },
    /// Print capsem's version, protocol and pinned asset hashes.
    Version,
    /// Show and change settings.
    ///
    /// Settings live in ~/.capsem/user.toml (moved by CAPSEM_HOME), where a
    /// dotted key is a table path: vm.cpus = 2 is [vm] / cpus = 2. Whatever
    /// /etc/capsem/corp.toml (CAPSEM_CORP_CONFIG) sets overrides it and is
    /// locked. Without a subcommand, lists them all.
    Settings {
        #[command(subcommand)]
        action: Option<SettingsAction>,
    },
    /// What guest programs did on the network.
    ///
    /// Guests have no network device that leads anywhere: each connection
    /// and DNS query is carried to capsem, which applies the network.* and
    /// ai.*/registry.* settings, proxies what is allowed and records it all
    /// in the session.
    Net {
        #[command(subcommand)]
        action: NetAction,
    },
    /// List recorded sessions, newest first; show, inspect or prune them.
    ///
    /// Every run is a session: a row in ~/.capsem/sessions.db and a
    /// directory ~/.capsem/sessions/ID/ with the boot log, QEMU's log and
    /// the session's events. An id prefix is accepted when unambiguous.
    Sessions {
        /// JSON Lines: one {"type":"session","data":{...}} object per line.
        #[arg(long)]
        json: bool,
        /// How many sessions to list.
        #[arg(short = 'n', long, default_value_t = 20, value_name = "N")]
        limit: usize,
        #[command(subcommand)]
        action: Option<SessionsAction>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetAction {
    /// Every connection, request, refusal and rejected packet of a session,
    /// oldest first.
    Log {
        /// Session id or unambiguous prefix; the newest session without.
        id: Option<String>,
        /// JSON Lines: one {"type":"net","data":{...}} object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SettingsAction {
    /// Every setting: its value (secrets masked, files summarised), where it
    /// comes from, and whether the corporate file locks it.
    List {
        /// JSON Lines: one {"type":"setting","data":{...}} object per line.
        #[arg(long)]
        json: bool,
    },
    /// One setting's value (a secret is never shown in full).
    Get {
        /// The dotted key, e.g. vm.cpus or guest.env.EDITOR.
        key: String,
    },
    /// Change a setting in the user file, checked against its type. The
    /// file keeps its comments; a locked key is refused.
    Set {
        /// The dotted key.
        key: String,
        /// The value; `-` reads it from stdin (for JSON or TOML contents).
        value: String,
    },
    /// Remove a setting from the user file, back to its default.
    Reset {
        /// The dotted key.
        key: String,
    },
    /// Print where the user and corporate files are.
    Path,
}

#[derive(Debug, Subcommand)]
pub enum SessionsAction {
    /// One session: command, outcome, timings, VM, assets, events, files.
    Show {
        /// Session id or unambiguous prefix.
        id: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check the database (and a session's events) for damage; exit 1 if
    /// anything is wrong.
    Inspect {
        /// Also check this session's event database.
        id: Option<String>,
    },
    /// Write what a terminal session showed, from its transcript.
    Replay {
        /// Session id or unambiguous prefix.
        id: String,
        /// Keep the original timing between outputs.
        #[arg(long)]
        timing: bool,
    },
    /// Delete finished sessions; without options, apply the retention
    /// settings (sessions.retention_days, sessions.max_count).
    Prune {
        /// Delete sessions started longer ago than this (30d, 12h, 90m, 2w).
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: Option<Duration>,
        /// Keep only the newest N sessions.
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AssetsAction {
    /// Hash every asset and compare it with the pinned manifest.
    Verify,
}

/// What to run and how.
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// Kill the VM and exit with 124 if the command runs longer than SECS.
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Set an environment variable for the command (repeatable).
    ///
    /// Variables that change how the loader or shell runs every command
    /// (LD_*, BASH_ENV, BASH_FUNC_*, IFS, PROMPT_COMMAND, PS4, ...) are
    /// refused.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Pass this variable of capsem's own environment to the command
    /// (repeatable), e.g. --pass-env ANTHROPIC_API_KEY. Nothing is passed
    /// unless asked.
    #[arg(long, value_name = "NAME", value_parser = parse_pass_env)]
    pub pass_env: Vec<String>,
    /// Run the command on a terminal in the guest (like `docker run -t`):
    /// full-screen programs work, stdout and stderr merge, and when stdin
    /// is a terminal it is put in raw mode so every key reaches the guest.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

impl RunArgs {
    /// Options given before `run` (`capsem --timeout 5 run -- x`) count too.
    pub fn with_outer(mut self, outer: RunArgs) -> RunArgs {
        self.timeout = self.timeout.or(outer.timeout);
        self.env.splice(0..0, outer.env);
        self.pass_env.splice(0..0, outer.pass_env);
        self.tty |= outer.tty;
        self
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 1e9) {
        return Err(format!("'{text}' is not a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_age(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("'{text}' needs a unit: s, m, h, d or w"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a number followed by s, m, h, d or w"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "unknown unit '{unit}' in '{text}': use s, m, h, d or w"
            ));
        }
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

fn parse_pass_env(name: &str) -> Result<String, String> {
    capsem_proto::validate_env_name(name).map_err(|e| e.to_string())?;
    Ok(name.to_owned())
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' is not KEY=VALUE"))?;
    capsem_proto::validate_env_name(name).map_err(|e| e.to_string())?;
    Ok((name.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("capsem").chain(args.iter().copied()))
    }

    #[test]
    fn a_bare_command_keeps_its_own_flags() {
        let cli = parse(&["uname", "-a"]).unwrap();
        assert!(cli.subcommand.is_none());
        assert_eq!(cli.run.command, ["uname", "-a"]);
        let cli = parse(&["-q", "--timeout", "5", "ls", "-l", "--color", "-q"]).unwrap();
        assert!(cli.global.quiet);
        assert_eq!(cli.run.timeout, Some(Duration::from_secs(5)));
        assert_eq!(cli.run.command, ["ls", "-l", "--color", "-q"]);
    }

    #[test]
    fn one_argument_stays_one_argument() {
        let cli = parse(&["ls -la /proc/cpuinfo"]).unwrap();
        assert_eq!(cli.run.command, ["ls -la /proc/cpuinfo"]);
    }

    #[test]
    fn run_subcommand_takes_options_and_command() {
        let cli = parse(&["-q", "run", "-e", "A=1", "--", "sh", "-c", "exit 42"]).unwrap();
        let Some(Subcmd::Run(run)) = cli.subcommand else {
            panic!("not run")
        };
        assert_eq!(run.env, [("A".to_owned(), "1".to_owned())]);
        assert_eq!(run.command, ["sh", "-c", "exit 42"]);
    }

    #[test]
    fn dangerous_environment_is_refused_at_parse_time() {
        let err = parse(&["run", "-e", "LD_PRELOAD=/x.so", "--", "true"]).unwrap_err();
        assert!(err.to_string().contains("LD_PRELOAD"), "{err}");
        assert!(parse(&["-e", "NOEQUALS", "true"]).is_err());
    }

    #[test]
    fn bad_timeouts_are_refused() {
        for t in ["0", "-1", "abc", "NaN"] {
            assert!(parse(&["--timeout", t, "true"]).is_err(), "{t}");
        }
        let cli = parse(&["--timeout", "0.5", "true"]).unwrap();
        assert_eq!(cli.run.timeout, Some(Duration::from_millis(500)));
    }

    #[test]
    fn options_before_run_are_kept() {
        let cli = parse(&[
            "--timeout",
            "3",
            "-e",
            "A=1",
            "--pass-env",
            "K",
            "-t",
            "run",
            "-e",
            "B=2",
            "--",
            "x",
        ])
        .unwrap();
        let Some(Subcmd::Run(run)) = cli.subcommand else {
            panic!("not run")
        };
        let run = run.with_outer(cli.run);
        assert_eq!(run.timeout, Some(Duration::from_secs(3)));
        assert_eq!(run.env.len(), 2);
        assert_eq!(run.env[0].0, "A");
        assert_eq!(run.pass_env, ["K"]);
        assert!(run.tty);
    }

    #[test]
    fn ages_have_units() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(5400)));
        assert!(parse_age("30").is_err());
        assert!(parse_age("d").is_err());
        assert!(parse_age("3y").is_err());
    }

    #[test]
    fn subcommands_are_recognised() {
        assert!(matches!(
            parse(&["assets", "verify"]).unwrap().subcommand,
            Some(Subcmd::Assets { .. })
        ));
        assert!(matches!(
            parse(&["version"]).unwrap().subcommand,
            Some(Subcmd::Version)
        ));
    }
}
