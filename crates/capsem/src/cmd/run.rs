//! `capsem run` and the bare `capsem CMD...` form.

use std::sync::Arc;
use std::time::{Duration, Instant};

use capsem_core::ai;
use capsem_core::channel::{Control, ExecIo};
use capsem_core::net::NetSettings;
use capsem_core::settings::{Live, Settings, VmSettings};
use capsem_core::vm::QemuBackend;
use capsem_core::{Outcome, RunRequest, Sandbox, paths};
use capsem_proto::{Command, TtySize};
use tokio::io::AsyncWrite;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::cli::{EnvArg, RunArgs, RunOptions};
use crate::embedded;
use crate::exit::{Failure, TIMED_OUT};
use crate::report::Report;
use crate::terminal::{self, RawMode};

/// Signals forwarded to the guest command instead of ending capsem.
const FORWARDED: [SignalKind; 4] = [
    SignalKind::interrupt(),
    SignalKind::terminate(),
    SignalKind::hangup(),
    SignalKind::quit(),
];
/// A terminal size for `-t` when capsem itself has no terminal.
pub const DEFAULT_SIZE: TtySize = TtySize { rows: 24, cols: 80 };

/// How the guest command's output reaches the user.
#[derive(Debug, Clone)]
pub enum Output {
    /// As it is: the command's output is the product.
    Raw,
    /// As a report of capsem's (`capsem doctor`): terminal controls the
    /// guest writes are shown as escapes.
    Report,
    /// Kept for capsem to read (`capsem doctor --json`); stderr as a report.
    Capture(Arc<std::sync::Mutex<Vec<u8>>>),
}

/// The AI CLIs, which open their interactive screen when run bare.
pub const AI_CLIS: [&str; 3] = ["claude", "gemini", "codex"];

/// Runs the command and returns capsem's exit code.
pub fn run(args: RunArgs, started: Instant, output: Output) -> i32 {
    let options = args.options.clone();
    block_on(&options, run_async(args, started, output))
}

/// Runs `body` on capsem's runtime, logging as `options` say; a failure
/// is reported.
pub fn block_on<F>(options: &RunOptions, body: F) -> i32
where
    F: std::future::Future<Output = Result<i32, Failure>>,
{
    crate::init_logging(options);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return Failure::new(format!("starting the async runtime: {e}")).report(),
    };
    let code = runtime
        .block_on(body)
        .unwrap_or_else(|failure| failure.report());
    // A thread may still be blocked reading a terminal stdin; waiting for
    // it would hang until the user pressed a key.
    runtime.shutdown_background();
    code
}

/// What to run: one argument is a command line for `bash -c`, several are
/// an exact argv, none is a script read from stdin (`bash -s`).
pub fn command_of(args: Vec<String>) -> Command {
    match args.len() {
        0 => Command::Argv(vec!["bash".into(), "-s".into()]),
        1 => Command::Shell(args.into_iter().next().unwrap_or_default()),
        _ => Command::Argv(args),
    }
}

/// The guest command's environment, each source overriding the ones
/// before: the AI CLIs' defaults (and API keys set in settings), on a
/// terminal the host's TERM (`guest.shell.term` when unset) and COLORTERM,
/// `guest.env.*`, `--pass-env` variables, then `-e`.
fn guest_env(
    settings: &Settings,
    tty: bool,
    pass: &[String],
    user: Vec<EnvArg>,
) -> Result<Vec<(String, String)>, Failure> {
    let mut env = ai::guest_env(settings);
    if tty {
        env.extend(terminal_env(settings));
    }
    env.extend(
        settings
            .guest_env()
            .map(|(k, v, _)| (k.to_owned(), v.to_owned())),
    );
    env.extend(user_env(pass, user)?);
    Ok(env)
}

/// TERM (the host's, else `guest.shell.term`) and COLORTERM for a guest
/// terminal.
pub fn terminal_env(settings: &Settings) -> Vec<(String, String)> {
    let term = std::env::var("TERM").ok().filter(|t| !t.is_empty());
    let term = term.unwrap_or_else(|| settings.text("guest.shell.term").to_owned());
    let mut env = vec![("TERM".to_owned(), term)];
    if let Ok(colorterm) = std::env::var("COLORTERM") {
        env.push(("COLORTERM".to_owned(), colorterm));
    }
    env
}

/// `--pass-env` variables, then `-e`.
pub fn user_env(pass: &[String], user: Vec<EnvArg>) -> Result<Vec<(String, String)>, Failure> {
    let own = |option: &str, name: &str| {
        let value = std::env::var(name).map_err(|_| {
            Failure::new(format!(
                "{option} {name}: {name} is not set in this environment"
            ))
        })?;
        Ok::<_, Failure>((name.to_owned(), value))
    };
    let mut env = Vec::new();
    for name in pass {
        env.push(own("--pass-env", name)?);
    }
    for arg in user {
        env.push(match arg {
            EnvArg::Set(name, value) => (name, value),
            EnvArg::Pass(name) => own("-e", &name)?,
        });
    }
    Ok(env)
}

/// Whether a command runs on a guest terminal: when asked (`-t`), and for
/// an AI CLI when capsem's stdin and stdout are a terminal, so that
/// `capsem claude` opens Claude Code's screen as the README says.
fn wants_terminal(args: &RunArgs) -> bool {
    let ai_cli = args
        .command
        .first()
        .is_some_and(|first| AI_CLIS.contains(&first.as_str()));
    args.tty || (ai_cli && terminal::stdin_is_terminal() && terminal::stdout_is_terminal())
}

async fn run_async(args: RunArgs, started: Instant, output: Output) -> Result<i32, Failure> {
    let tty = wants_terminal(&args).then(|| terminal::size().unwrap_or(DEFAULT_SIZE));
    let options = args.options;
    let settings = load_settings()?;
    let workspace = super::workspace::for_run(&args.workspace, &args.command, &settings)?;
    let command = command_of(args.command);
    let controls = forward_controls(tty.is_some())?;
    let sandbox = sandbox_for(&settings, settings.vm(), started)?;
    // Raw mode from here on; the guard restores the terminal when this
    // function returns, before any error is printed.
    let raw = match tty {
        Some(_) if terminal::stdin_is_terminal() => Some(
            RawMode::enter()
                .map_err(|e| Failure::new(format!("setting the terminal to raw mode: {e}")))?,
        ),
        _ => None,
    };
    let quiet = options.quiet;
    let line_end = if raw.is_some() { "\r\n" } else { "\n" };
    let notice: capsem_core::Notice = Arc::new(move |text: &str| {
        if !quiet {
            eprint!("capsem: {text}{line_end}");
        }
    });
    settings.warnings.iter().for_each(|w| notice(w));
    if let Some(spec) = &workspace {
        notice(&super::workspace::mounted_notice(&spec.workspace));
    }
    let (stdout, stderr): (Writer, Writer) = match output {
        Output::Raw => (Box::new(tokio::io::stdout()), Box::new(tokio::io::stderr())),
        Output::Report => (
            Box::new(Report::new(tokio::io::stdout())),
            Box::new(Report::new(tokio::io::stderr())),
        ),
        Output::Capture(kept) => (
            Box::new(Captured(kept)),
            Box::new(Report::new(tokio::io::stderr())),
        ),
    };
    let io = ExecIo {
        stdin: Some(Box::new(tokio::io::stdin())),
        stdout,
        stderr,
        controls,
    };
    let limit = settings.vm().timeout_secs;
    // --timeout 0 lifts a configured limit.
    let timeout = match options.timeout {
        Some(limit) => Some(limit).filter(|l| !l.is_zero()),
        None => (limit > 0).then(|| Duration::from_secs(limit.into())),
    };
    let mut files = ai::guest_files(&settings);
    if let Some(spec) = &workspace {
        ai::trust_project(&mut files, &format!("/root/{}", spec.workspace.name));
    }
    let request = RunRequest {
        command,
        env: guest_env(&settings, tty.is_some(), &options.pass_env, options.env)?,
        tty,
        files,
        timeout,
        workspace,
    };
    let had_workspace = request.workspace.is_some();
    let report = sandbox.run(request, io, notice.clone()).await;
    drop(raw);
    let report = report?;
    if had_workspace {
        notice(&format!(
            "workspace: changes kept; see them with `capsem diff {0}`, apply with `capsem apply {0}`",
            report.session
        ));
    }
    Ok(match report.outcome {
        Outcome::Exited(status) => i32::from(status.shell_code()),
        Outcome::TimedOut => {
            let secs = timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
            eprintln!("capsem: the command ran longer than {secs} s; the VM was destroyed");
            TIMED_OUT
        }
        // As a shell reports a command killed by the signal.
        Outcome::Interrupted(signal) => 128 + i32::from(signal),
    })
}

/// The settings, or the reason they cannot be read.
pub fn load_settings() -> Result<Settings, Failure> {
    Settings::load().map_err(|e| {
        Failure::new(e).hint("fix or remove the file; capsem never rewrites a file it cannot read")
    })
}

/// The sandbox machinery for VMs of shape `vm`, with this build's assets.
pub fn sandbox_for(
    settings: &Settings,
    vm: VmSettings,
    started: Instant,
) -> Result<Sandbox, Failure> {
    let embedded::Assets {
        manifest,
        dir: asset_dir,
        ..
    } = embedded::assets()?;
    let backend = QemuBackend::locate().map_err(|e| {
        Failure::new(e).hint("sudo apt-get install qemu-system-x86 (or set CAPSEM_QEMU)")
    })?;
    Ok(Sandbox {
        vm,
        sessions: settings.sessions(),
        manifest,
        asset_dir,
        backend: Arc::new(backend),
        home: paths::capsem_home(),
        started,
        settings: {
            let live = Live::new(NetSettings::new);
            Arc::new(move || live.load())
        },
        templates: paths::templates(),
    })
}

/// Where the guest's output goes.
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Output kept in memory for capsem to read after the run.
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl AsyncWrite for Captured {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // What the guest may make capsem keep is bounded.
        let room = CAPTURE_LIMIT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..buf.len().min(room)]);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Most bytes of a captured output kept.
const CAPTURE_LIMIT: usize = 4 * 1024 * 1024;

/// Catches the signals a user sends to stop a command and queues them for
/// the guest, where they reach the command's process group. On a terminal,
/// SIGTERM and SIGHUP become a hang-up, which an interactive shell obeys
/// (it ignores SIGTERM), and window changes become resizes.
pub fn forward_controls(tty: bool) -> Result<mpsc::Receiver<Control>, Failure> {
    let (tx, rx) = mpsc::channel(8);
    let listen = |kind: SignalKind| {
        signal(kind).map_err(|e| Failure::new(format!("installing a signal handler: {e}")))
    };
    for kind in FORWARDED {
        let mut stream = listen(kind)?;
        let hang_up = tty && (kind == SignalKind::terminate() || kind == SignalKind::hangup());
        let number = if hang_up { SignalKind::hangup() } else { kind }.as_raw_value() as u8;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(Control::Signal(number)).await.is_err() {
                    break;
                }
            }
        });
    }
    if tty {
        let mut stream = listen(SignalKind::window_change())?;
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                let Some(size) = terminal::size() else {
                    continue;
                };
                if tx.send(Control::Resize(size)).await.is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_env_overrides_the_terminal_defaults() {
        let env = guest_env(
            &Settings::defaults(),
            true,
            &[],
            vec![EnvArg::Set("TERM".into(), "dumb".into())],
        )
        .unwrap();
        let term: Vec<&str> = env
            .iter()
            .filter(|(k, _)| k == "TERM")
            .map(|(_, v)| v.as_str())
            .collect();
        // Later entries win in the guest, so the user's comes last.
        assert_eq!(term.last(), Some(&"dumb"));
    }

    #[test]
    fn argument_counts_choose_the_command_form() {
        assert_eq!(
            command_of(vec![]),
            Command::Argv(vec!["bash".into(), "-s".into()])
        );
        assert_eq!(
            command_of(vec!["ls -l".into()]),
            Command::Shell("ls -l".into())
        );
        assert_eq!(
            command_of(vec!["ls".into(), "-l".into()]),
            Command::Argv(vec!["ls".into(), "-l".into()])
        );
    }
}
