//! The command line.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const EXIT_STATUS: &str = "\
Exit status:
  N      the guest command's own exit status
  128+N  the guest command was killed by signal N
  124    --timeout expired (a one-shot run's VM is destroyed; a named
         sandbox's command is killed and the sandbox runs on)
  125    capsem itself failed (the message says why and what to do)
  126    the command exists but could not be run
  127    the command was not found in the guest";

/// Run a command in a throw-away, hardened Linux microVM.
///
/// Every run boots a fresh VM from pinned, verified images, runs the command
/// with its stdin, stdout and stderr connected to yours, and destroys the VM.
/// Nothing persists between runs; a named sandbox (`capsem create`) lives on
/// instead, with a /root of its own. The VM has no network device: guest
/// connections go through capsem's policy proxy, which reaches only the
/// names your settings allow (see `capsem net log`).
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
                      capsem create | exec | shell | cp | ls | logs | start | stop | rm | service\n       \
                      capsem diff | apply | discard\n       \
                      capsem doctor | sessions | net | settings | assets | version | completions | man",
    after_help = EXIT_STATUS,
    subcommand_value_name = "COMMAND",
)]
pub struct Cli {
    #[command(subcommand)]
    pub subcommand: Option<Subcmd>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// The options of a run (`capsem CMD`, `run`, `shell`, `doctor`); an
/// error anywhere else.
#[derive(Debug, Default, Clone, PartialEq, Args)]
pub struct RunOptions {
    /// Print nothing of capsem's own but errors.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Show the boot phases with timings (for `doctor`: also list every
    /// check).
    #[arg(short, long)]
    pub verbose: bool,
    /// Kill the command and exit with 124 if it runs longer than SECS (a
    /// one-shot run's VM goes with it; 0: no limit, whatever
    /// vm.timeout_secs says).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Set an environment variable for the command (repeatable); `-e NAME`
    /// alone passes capsem's own value of NAME, like --pass-env.
    ///
    /// Variables that change how the loader or shell runs every command
    /// (LD_*, BASH_ENV, BASH_FUNC_*, IFS, PROMPT_COMMAND, PS4, ...) are
    /// refused.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<EnvArg>,
    /// Pass this variable of capsem's own environment to the command
    /// (repeatable), e.g. --pass-env ANTHROPIC_API_KEY. Nothing is passed
    /// unless asked.
    #[arg(long, value_name = "NAME", value_parser = parse_pass_env)]
    pub pass_env: Vec<String>,
}

/// An `-e` argument: a value, or a variable to pass from capsem's own
/// environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvArg {
    /// `-e KEY=VALUE`.
    Set(String, String),
    /// `-e NAME`.
    Pass(String),
}

impl RunOptions {
    /// Options given before a subcommand (`capsem --timeout 5 run -- x`)
    /// count too; the subcommand's own come after them.
    pub fn with_outer(mut self, outer: RunOptions) -> RunOptions {
        self.quiet |= outer.quiet;
        self.verbose |= outer.verbose;
        self.timeout = self.timeout.or(outer.timeout);
        self.env.splice(0..0, outer.env);
        self.pass_env.splice(0..0, outer.pass_env);
        self
    }

    /// The first option given, as typed, if any: what a subcommand that is
    /// not a run refuses.
    pub fn first_given(&self) -> Option<&'static str> {
        [
            (self.quiet, "--quiet"),
            (self.verbose, "--verbose"),
            (self.timeout.is_some(), "--timeout"),
            (!self.env.is_empty(), "--env"),
            (!self.pass_env.is_empty(), "--pass-env"),
        ]
        .into_iter()
        .find_map(|(given, name)| given.then_some(name))
    }
}

/// What to run and how.
#[derive(Debug, Default, Clone, PartialEq, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub options: RunOptions,
    /// Run the command on a terminal in the guest (like `docker run -t`):
    /// full-screen programs work, stdout and stderr merge, and when stdin
    /// is a terminal it is put in raw mode so every key reaches the guest.
    /// When stdin is not a terminal, its end reaches the guest terminal as
    /// an end of file (Ctrl-D).
    #[arg(short = 't', long)]
    pub tty: bool,
    #[command(flatten)]
    pub workspace: WorkspaceArgs,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Which project a run works on.
#[derive(Debug, Default, Clone, PartialEq, Args)]
pub struct WorkspaceArgs {
    /// Show the project DIR to the command at /root/NAME, its working
    /// directory: read-only on the host, the guest's writes kept apart
    /// for `capsem diff` / `capsem apply`. The AI CLIs get the git work
    /// tree around the current directory without it (workspace.auto).
    #[arg(short = 'w', long, value_name = "DIR", conflicts_with = "no_workspace")]
    pub workspace: Option<std::path::PathBuf>,
    /// No workspace, not even for an AI CLI.
    #[arg(long)]
    pub no_workspace: bool,
}

impl RunArgs {
    /// Options given before `run` (`capsem --timeout 5 run -- x`) count too.
    pub fn with_outer(mut self, outer: RunArgs) -> RunArgs {
        self.options = self.options.with_outer(outer.options);
        self.tty |= outer.tty;
        self.workspace.workspace = self.workspace.workspace.or(outer.workspace.workspace);
        self.workspace.no_workspace |= outer.workspace.no_workspace;
        self
    }
}

#[derive(Debug, Subcommand)]
pub enum Subcmd {
    /// Run a command in a fresh VM (the default).
    Run(RunArgs),
    /// Open an interactive shell (bash, as a login shell) in a fresh VM, or
    /// in the running sandbox NAME.
    ///
    /// Without NAME, the same as `capsem` with no arguments on a terminal:
    /// the VM is destroyed when the shell exits, and capsem exits with its
    /// status. With NAME, leaving the shell leaves the sandbox running.
    Shell(ShellArgs),
    /// Create a named sandbox that lives on: boots it, waits until it
    /// takes commands, prints its name.
    ///
    /// It has a disk of its own at /root (sandbox.disk_gib, sparse) that
    /// survives `capsem stop` / `capsem start`; `capsem rm` deletes it.
    /// Named sandboxes are run by the capsem service, which the CLI starts
    /// when it is not running.
    Create(CreateArgs),
    /// Run a command in a running sandbox, with the stdio, exit status,
    /// signal and --timeout behaviour of a one-shot run (a timeout kills
    /// the command, not the sandbox).
    Exec(ExecArgs),
    /// Copy files between the host and a running sandbox.
    ///
    /// One side is NAME:PATH (PATH absolute, or relative to /root), the
    /// other a host path, or - for stdin or stdout (one file). A directory
    /// is copied whole, with modes and modification times; a destination
    /// that is a directory receives the source under its own name.
    /// Symlinks are copied as symlinks, never followed (-L follows the
    /// host's). Out of a sandbox only files, directories and symlinks
    /// land, without setuid or setgid bits, at most sandbox.max_copy_bytes,
    /// and nothing is written unless the whole copy is good.
    Cp {
        /// Follow symlinks in a host source.
        #[arg(short = 'L', long)]
        follow: bool,
        /// What to copy.
        src: String,
        /// Where to.
        dest: String,
    },
    /// Show what a run changed in its workspace: a unified diff of text
    /// files; size and BLAKE3 of binary ones; new, deleted and renamed
    /// files, mode changes and symlinks. Changes that would run code on
    /// the host (.git/hooks, .envrc, .vscode, CI workflows, new executable
    /// bits) are flagged.
    ///
    /// ID is a session (an unambiguous prefix will do); without it, the
    /// newest session with changes kept.
    Diff {
        /// One line per change: A(dded), M(odified), D(eleted), R(enamed).
        #[arg(long, conflicts_with = "json")]
        stat: bool,
        /// JSON Lines: {"type":"change","data":{...}} per change (see
        /// docs/json.md).
        #[arg(long)]
        json: bool,
        /// The session.
        id: Option<String>,
    },
    /// Write a run's workspace changes into the project, after showing
    /// what they are.
    ///
    /// Nothing is written if a host file changed after the run first saw
    /// the project (a conflict; --force overwrites). Each file is written
    /// whole under a temporary name and renamed into place, with its
    /// permission bits but never setuid or setgid; nothing is written
    /// outside the project or through a symlink. .git/hooks and
    /// .git/config are applied only with --include-git-internals.
    Apply(ApplyArgs),
    /// Forget a run's workspace changes.
    Discard {
        /// The session (default: the newest with changes kept).
        id: Option<String>,
    },
    /// Show a sandbox's boot log, then its commands' starts and ends.
    Logs {
        /// Go on showing new lines until the sandbox stops.
        #[arg(short, long)]
        follow: bool,
        /// The sandbox (an unambiguous prefix will do).
        name: String,
    },
    /// List the named sandboxes.
    Ls {
        /// JSON Lines: {"type":"sandbox","data":{...}} per sandbox (see
        /// docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Start a stopped sandbox (its /root as it was left), or continue a
    /// suspended one.
    Start {
        /// The sandbox (an unambiguous prefix will do).
        name: String,
    },
    /// Stop a running sandbox: its processes end, its disk stays.
    Stop {
        /// The sandbox (an unambiguous prefix will do).
        name: String,
    },
    /// Suspend a running sandbox: its memory and device state go to its
    /// directory and its VM stops using CPU and host memory; `resume`
    /// continues it where it was (commands still running go on, their
    /// clients wait). Stopping it instead discards the memory.
    Suspend {
        /// The sandbox (an unambiguous prefix will do).
        name: String,
    },
    /// Continue a suspended sandbox where it was.
    Resume {
        /// The sandbox (an unambiguous prefix will do).
        name: String,
    },
    /// Remove a sandbox and its disk.
    Rm {
        /// Stop it first if it runs.
        #[arg(short, long)]
        force: bool,
        /// The sandbox (an unambiguous prefix will do).
        name: String,
    },
    /// Open the web UI: sandboxes and their terminals in the browser,
    /// served by the capsem service on 127.0.0.1 (started if needed).
    Ui {
        /// Only print the addresses; open no browser (e.g. over SSH: forward
        /// the port, then open the sign-in address on your machine).
        #[arg(long)]
        no_open: bool,
        /// The port on 127.0.0.1 (default: ui.port, 7317).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
    },
    /// Serve the Model Context Protocol on stdin and stdout, so that an
    /// agent on the host can create sandboxes, run commands and move files
    /// in them (register: `claude mcp add capsem -- capsem mcp`).
    Mcp,
    /// Serve E2B's API on 127.0.0.1, so that code written for E2B's SDKs
    /// runs its sandboxes here: set E2B_API_URL and E2B_SANDBOX_URL to
    /// http://127.0.0.1:PORT and E2B_API_KEY to the key it prints
    /// (docs/e2b.md). Its sandboxes are deleted when it stops.
    E2b {
        /// The port on 127.0.0.1 (the setting e2b.port when absent).
        #[arg(long)]
        port: Option<u16>,
    },
    /// The capsem service, which runs the named sandboxes (the CLI starts
    /// it when needed). Without a subcommand: its status.
    Service {
        #[command(subcommand)]
        action: Option<ServiceAction>,
    },
    /// Supervise one sandbox (started by the service; not for use by hand).
    #[command(hide = true)]
    Supervise {
        /// The sandbox.
        name: String,
    },
    /// Run the in-VM diagnostics: is the sandbox really sealed, and does
    /// everything in it work?
    ///
    /// Boots a VM and runs its pytest suite (capsem-doctor): sandbox claims
    /// (no path out but the policy proxy, read-only system, no kernel
    /// extension, no services), network attacks, utilities, runtimes,
    /// workflows and environment. Exits non-zero when a check fails. With
    /// -v, every check is listed.
    Doctor(DoctorArgs),
    /// Check the VM images against the hashes built into capsem.
    Assets {
        #[command(subcommand)]
        action: AssetsAction,
    },
    /// Print capsem's version, protocol and pinned asset hashes.
    Version {
        /// One JSON object instead of text (see docs/json.md).
        #[arg(long)]
        json: bool,
    },
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
        #[command(flatten)]
        list: ListArgs,
        #[command(subcommand)]
        action: Option<SessionsAction>,
    },
    /// Print a completion script for a shell (bash, zsh, fish, elvish,
    /// powershell), e.g. `capsem completions bash > ~/.local/share/bash-completion/completions/capsem`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print capsem's manual page (roff), or write one page per command
    /// into DIR.
    Man {
        /// Write capsem.1 and capsem-COMMAND.1 here instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

/// `capsem apply`.
#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// Apply without asking.
    #[arg(short, long)]
    pub yes: bool,
    /// Overwrite host files that changed since the run saw them.
    #[arg(long)]
    pub force: bool,
    /// Apply changes to .git/hooks and .git/config too (they run code on
    /// the host).
    #[arg(long)]
    pub include_git_internals: bool,
    /// The session (an unambiguous prefix; default: the newest with
    /// changes kept), then paths under the project to apply only those.
    #[arg(value_name = "ID|PATH")]
    pub args: Vec<String>,
}

/// `capsem shell [NAME]`.
#[derive(Debug, Clone, Default, Args)]
pub struct ShellArgs {
    #[command(flatten)]
    pub options: RunOptions,
    /// A running sandbox to open the shell in, instead of a fresh VM.
    pub name: Option<String>,
}

/// `capsem create`.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Its name: 1 to 63 of a-z, 0-9 and '-' (default: a generated one).
    #[arg(short, long)]
    pub name: Option<String>,
    /// vCPUs (default: vm.cpus).
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Guest RAM in MiB (default: vm.memory_mib).
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u32>,
    /// An environment variable for every command in it (repeatable);
    /// `-e NAME` passes capsem's own value.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<EnvArg>,
    /// Show the project DIR at /root/NAME, as `capsem run -w`; the
    /// sandbox's changes to it stay on its disk across stop and start,
    /// for `capsem diff NAME` / `capsem apply NAME`.
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workspace: Option<std::path::PathBuf>,
}

/// `capsem exec`.
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub options: RunOptions,
    /// Run the command on a terminal in the guest, as `capsem run -t`.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The sandbox (an unambiguous prefix will do).
    pub name: String,
    /// The command: one argument is a line for `bash -c`, several an argv.
    #[arg(trailing_var_arg = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `capsem service ACTION`.
#[derive(Debug, Clone, Subcommand)]
pub enum ServiceAction {
    /// Whether it runs, its pid, and how many sandboxes it knows.
    Status {
        /// One {"type":"service","data":{...}} line (see docs/json.md);
        /// exit 3 when it is not running.
        #[arg(long)]
        json: bool,
    },
    /// Start it in the background, if it is not running.
    Start,
    /// Stop it; the sandboxes go on running, and the next capsem command
    /// that needs the service starts it again and finds them.
    Stop,
    /// Run it in the foreground (what `start` runs).
    Run,
}

/// `capsem doctor`'s own options, and a run's.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Only run checks matching this pytest expression (e.g. sandbox).
    #[arg(short = 'k', value_name = "EXPR")]
    pub filter: Option<String>,
    /// Stop at the first failing check.
    #[arg(short = 'x', long = "exitfirst")]
    pub exit_first: bool,
    /// A JSON summary instead of the report (see docs/json.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub options: RunOptions,
}

/// How many sessions to list, and how.
#[derive(Debug, Clone, Default, Args)]
pub struct ListArgs {
    /// JSON Lines: one {"type":"session","data":{...}} object per line.
    #[arg(long)]
    pub json: bool,
    /// How many sessions to list.
    #[arg(short = 'n', long, default_value_t = 20, value_name = "N")]
    pub limit: usize,
}

#[derive(Debug, Subcommand)]
pub enum NetAction {
    /// Every connection, request, refusal and rejected packet of a session,
    /// then its DNS queries and model calls, each oldest first.
    Log {
        /// Session id or unambiguous prefix, or a named sandbox (its
        /// current or last boot); the newest session without.
        id: Option<String>,
        /// JSON Lines: {"type":"dns"|"net"|"model_call","data":{...}}
        /// objects, DNS queries first (see docs/json.md).
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
        /// One {"type":"setting","data":{...}} object instead of the value.
        #[arg(long)]
        json: bool,
    },
    /// Change a setting in the user file, checked against its type and the
    /// host. The file keeps its comments; a locked key is refused.
    Set {
        /// The dotted key.
        key: String,
        /// The value; `-` reads it from stdin (for JSON or TOML contents).
        value: String,
    },
    /// Remove a setting from the user file, back to its default; the
    /// file's comments stay.
    Reset {
        /// The dotted key.
        key: String,
    },
    /// Print where the user and corporate files are.
    Path,
}

#[derive(Debug, Subcommand)]
pub enum SessionsAction {
    /// Recent sessions, newest first (the same as `capsem sessions`).
    List(ListArgs),
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
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
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
        /// Keep only the newest N sessions (0 deletes every finished one,
        /// and needs --yes).
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
        /// Only say what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask before deleting every finished session.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AssetsAction {
    /// Hash every asset and compare it with the pinned manifest.
    Verify {
        /// One JSON object instead of text (see docs/json.md).
        #[arg(long)]
        json: bool,
    },
}

/// Seconds; 0 means no limit (`Duration::ZERO`).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("'{text}' is not a number of seconds from 0 up"));
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

fn parse_env(text: &str) -> Result<EnvArg, String> {
    let Some((name, value)) = text.split_once('=') else {
        capsem_proto::validate_env_name(text).map_err(|e| e.to_string())?;
        return Ok(EnvArg::Pass(text.to_owned()));
    };
    capsem_proto::validate_env_name(name).map_err(|e| e.to_string())?;
    Ok(EnvArg::Set(name.to_owned(), value.to_owned()))
}

/// What clap cannot check: run options given to a subcommand that runs
/// nothing, and a first word that is a near miss of a subcommand (which
/// would boot a VM only to say "command not found").
pub fn check(cli: &Cli) -> Result<(), clap::Error> {
    use clap::CommandFactory;
    use clap::error::ErrorKind;
    let mut command = Cli::command();
    if let Some(sub) = &cli.subcommand
        && !matches!(
            sub,
            Subcmd::Run(_) | Subcmd::Shell(_) | Subcmd::Doctor(_) | Subcmd::Exec(_)
        )
    {
        let given = cli
            .run
            .options
            .first_given()
            .or(cli.run.tty.then_some("--tty"))
            .or(cli
                .run
                .workspace
                .workspace
                .is_some()
                .then_some("--workspace"))
            .or(cli.run.workspace.no_workspace.then_some("--no-workspace"));
        if let Some(option) = given {
            let message = format!(
                "{option} is an option of runs (capsem COMMAND, run, shell, doctor, exec), not of `capsem {}`",
                sub.name()
            );
            return Err(command.error(ErrorKind::ArgumentConflict, message));
        }
    }
    if cli.subcommand.is_none()
        && let Some(word) = cli.run.command.first()
        && let Some(near) = near_miss(word)
    {
        let message = format!(
            "unknown command '{word}'; did you mean `capsem {near}`?\n\
             (to run a guest program of that name: capsem run -- {word})"
        );
        return Err(command.error(ErrorKind::InvalidSubcommand, message));
    }
    Ok(())
}

/// The subcommand `word` is most likely a typo of: one or two letters off
/// a name of five letters or more, one off a shorter one. Words of three
/// letters or less are never caught (`nft` is not a typo of `net`).
fn near_miss(word: &str) -> Option<String> {
    use clap::CommandFactory;
    if word.len() <= 3 || word.starts_with('-') {
        return None;
    }
    let command = Cli::command();
    let mut names = command.get_subcommands().map(|c| c.get_name());
    names
        .find(|name| {
            let distance = strsim::damerau_levenshtein(word, name);
            distance > 0 && distance <= if name.len() >= 5 { 2 } else { 1 }
        })
        .map(str::to_owned)
}

impl Subcmd {
    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Subcmd::Run(_) => "run",
            Subcmd::Shell(_) => "shell",
            Subcmd::Doctor(_) => "doctor",
            Subcmd::Assets { .. } => "assets",
            Subcmd::Version { .. } => "version",
            Subcmd::Settings { .. } => "settings",
            Subcmd::Net { .. } => "net",
            Subcmd::Sessions { .. } => "sessions",
            Subcmd::Completions { .. } => "completions",
            Subcmd::Man { .. } => "man",
            Subcmd::Create(_) => "create",
            Subcmd::Exec(_) => "exec",
            Subcmd::Ls { .. } => "ls",
            Subcmd::Cp { .. } => "cp",
            Subcmd::Logs { .. } => "logs",
            Subcmd::Start { .. } => "start",
            Subcmd::Stop { .. } => "stop",
            Subcmd::Suspend { .. } => "suspend",
            Subcmd::Resume { .. } => "resume",
            Subcmd::Rm { .. } => "rm",
            Subcmd::Service { .. } => "service",
            Subcmd::Ui { .. } => "ui",
            Subcmd::Mcp => "mcp",
            Subcmd::E2b { .. } => "e2b",
            Subcmd::Supervise { .. } => "supervise",
            Subcmd::Diff { .. } => "diff",
            Subcmd::Apply(_) => "apply",
            Subcmd::Discard { .. } => "discard",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("capsem").chain(args.iter().copied()))?;
        check(&cli)?;
        Ok(cli)
    }

    #[test]
    fn a_bare_command_keeps_its_own_flags() {
        let cli = parse(&["uname", "-a"]).unwrap();
        assert!(cli.subcommand.is_none());
        assert_eq!(cli.run.command, ["uname", "-a"]);
        let cli = parse(&["-q", "--timeout", "5", "grep", "-l", "--color", "-q"]).unwrap();
        assert!(cli.run.options.quiet);
        assert_eq!(cli.run.options.timeout, Some(Duration::from_secs(5)));
        assert_eq!(cli.run.command, ["grep", "-l", "--color", "-q"]);
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
        assert_eq!(run.options.env, [EnvArg::Set("A".into(), "1".into())]);
        assert_eq!(run.command, ["sh", "-c", "exit 42"]);
    }

    #[test]
    fn dangerous_environment_is_refused_at_parse_time() {
        let err = parse(&["run", "-e", "LD_PRELOAD=/x.so", "--", "true"]).unwrap_err();
        assert!(err.to_string().contains("LD_PRELOAD"), "{err}");
        assert!(parse(&["-e", "LD_PRELOAD", "true"]).is_err());
        let cli = parse(&["-e", "EDITOR", "true"]).unwrap();
        assert_eq!(cli.run.options.env, [EnvArg::Pass("EDITOR".into())]);
    }

    #[test]
    fn timeouts_are_seconds_and_zero_lifts_the_limit() {
        for t in ["-1", "abc", "NaN"] {
            assert!(parse(&["--timeout", t, "true"]).is_err(), "{t}");
        }
        let cli = parse(&["--timeout", "0.5", "true"]).unwrap();
        assert_eq!(cli.run.options.timeout, Some(Duration::from_millis(500)));
        let cli = parse(&["--timeout", "0", "true"]).unwrap();
        assert_eq!(cli.run.options.timeout, Some(Duration::ZERO));
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
        assert_eq!(run.options.timeout, Some(Duration::from_secs(3)));
        assert_eq!(run.options.env.len(), 2);
        assert_eq!(run.options.env[0], EnvArg::Set("A".into(), "1".into()));
        assert_eq!(run.options.pass_env, ["K"]);
        assert!(run.tty);
    }

    #[test]
    fn run_options_elsewhere_are_errors() {
        for args in [
            &["--timeout", "5", "sessions"][..],
            &["-e", "X=1", "version"],
            &["-v", "settings"],
            &["-q", "net", "log"],
            &["-t", "assets", "verify"],
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains("is an option of runs"), "{args:?}: {err}");
        }
        assert!(
            parse(&["settings", "-v"]).is_err(),
            "-v is not a settings option"
        );
        let cli = parse(&["doctor", "--timeout", "3", "-k", "sandbox"]).unwrap();
        let Some(Subcmd::Doctor(doctor)) = cli.subcommand else {
            panic!("not doctor")
        };
        assert_eq!(doctor.options.timeout, Some(Duration::from_secs(3)));
        assert!(parse(&["-q", "doctor"]).is_ok());
        assert!(parse(&["-q", "shell"]).is_ok());
    }

    #[test]
    fn near_misses_of_subcommands_are_refused_with_a_suggestion() {
        for (typo, meant) in [
            ("sesions", "sessions"),
            ("setings", "settings"),
            ("doctr", "doctor"),
            ("verison", "version"),
            ("completion", "completions"),
        ] {
            let err = parse(&[typo]).unwrap_err().to_string();
            assert!(
                err.contains(&format!("did you mean `capsem {meant}`")),
                "{err}"
            );
        }
        for real in [
            "nft",
            "ls",
            "python3",
            "git",
            "make",
            "node",
            "sessionsx-tool",
        ] {
            assert!(parse(&[real]).is_ok(), "{real}");
        }
        assert!(
            parse(&["run", "--", "sesions"]).is_ok(),
            "run -- takes any name"
        );
    }

    #[test]
    fn an_unknown_option_before_the_command_is_capsems_error() {
        let err = parse(&["--jsn"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument, "{err}");
        assert!(
            parse(&["--", "--version"]).is_ok(),
            "after -- it is a command"
        );
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
            Some(Subcmd::Version { .. })
        ));
        assert!(matches!(
            parse(&["sessions", "list", "-n", "3"]).unwrap().subcommand,
            Some(Subcmd::Sessions {
                action: Some(SessionsAction::List(ListArgs { limit: 3, .. })),
                ..
            })
        ));
    }

    /// The options a usage line names: `-k`, `--json`, `-e` from
    /// `[-e KEY[=VALUE]]...`, `-q` and `-v` from `[-q|-v]`.
    fn options_of(line: &str) -> Vec<String> {
        line.split(['[', ']', '|', ' ', '('])
            .filter(|word| word.starts_with('-') && word.len() > 1 && *word != "--")
            .map(|word| word.trim_end_matches("...").to_owned())
            .collect()
    }

    #[test]
    fn the_readmes_usage_block_matches_the_clap_definitions() {
        use clap::CommandFactory;
        let readme = include_str!("../../../README.md");
        let block = readme
            .split("## Usage\n\n```\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("README has a Usage block");
        let top = Cli::command();
        let mut named = Vec::new();
        for line in block.lines() {
            let usage = line.split(" # ").next().unwrap_or("");
            // Down the subcommands the line names (`net log`).
            let mut command = top.clone();
            for word in usage.split_whitespace().skip(1) {
                match command.find_subcommand(word) {
                    Some(sub) => command = sub.clone(),
                    None => break,
                }
            }
            named.push(usage.split_whitespace().nth(1).unwrap_or("").to_owned());
            command.build();
            for option in options_of(usage) {
                let known = command.get_arguments().any(|arg| {
                    let long = arg.get_long().map(|l| format!("--{l}"));
                    let short = arg.get_short().map(|s| format!("-{s}"));
                    long.as_deref() == Some(option.as_str())
                        || short.as_deref() == Some(option.as_str())
                });
                assert!(
                    known,
                    "README: `{line}` names {option}, which `capsem {} --help` lacks",
                    command.get_name()
                );
            }
        }
        for sub in top.get_subcommands().filter(|sub| !sub.is_hide_set()) {
            assert!(
                named.iter().any(|n| n == sub.get_name()),
                "README's usage lacks `capsem {}`",
                sub.get_name()
            );
        }
    }

    #[test]
    fn every_subcommand_has_help_that_renders() {
        use clap::CommandFactory;
        let mut top = Cli::command();
        top.build();
        for sub in top.get_subcommands_mut() {
            let help = sub.render_long_help().to_string();
            assert!(!help.is_empty(), "{}", sub.get_name());
            for stale in ["VM has no network.", "(no network,"] {
                assert!(
                    !help.contains(stale),
                    "stale words in `{} --help`",
                    sub.get_name()
                );
            }
        }
        assert!(
            !top.render_long_help()
                .to_string()
                .contains("VM has no network.")
        );
    }
}
