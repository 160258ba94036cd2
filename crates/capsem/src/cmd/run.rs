//! `capsem run` and the bare `capsem CMD...` form.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

use capsem_core::channel::ExecIo;
use capsem_core::settings::Settings;
use capsem_core::vm::QemuBackend;
use capsem_core::{Outcome, RunRequest, Sandbox, paths};
use capsem_proto::Command;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::cli::{GlobalArgs, RunArgs};
use crate::embedded;
use crate::exit::{Failure, TIMED_OUT};

/// Signals forwarded to the guest command instead of ending capsem.
const FORWARDED: [SignalKind; 4] = [
    SignalKind::interrupt(),
    SignalKind::terminate(),
    SignalKind::hangup(),
    SignalKind::quit(),
];

/// Runs the command and returns capsem's exit code.
pub fn run(args: RunArgs, global: &GlobalArgs, started: Instant) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return Failure::new(format!("starting the async runtime: {e}")).report(),
    };
    runtime
        .block_on(run_async(args, global, started))
        .unwrap_or_else(|failure| failure.report())
}

/// What to run: one argument is a command line for `bash -c`, several are
/// an exact argv. With none, a script read from a non-terminal stdin.
fn command_of(args: Vec<String>) -> Result<Command, Failure> {
    match args.len() {
        0 if !std::io::stdin().is_terminal() => Ok(Command::Argv(vec!["bash".into(), "-s".into()])),
        0 => Err(Failure::new("no command given")
            .hint("try `capsem uname -a`; an interactive shell is not available yet")),
        1 => Ok(Command::Shell(args.into_iter().next().unwrap_or_default())),
        _ => Ok(Command::Argv(args)),
    }
}

async fn run_async(args: RunArgs, global: &GlobalArgs, started: Instant) -> Result<i32, Failure> {
    let command = command_of(args.command)?;
    let signals = forward_signals()?;
    let (manifest, asset_dir) = embedded::assets()?;
    let settings = Settings::load().map_err(|e| {
        Failure::new(e).hint("fix or remove the file; capsem never rewrites a file it cannot read")
    })?;
    let quiet = global.quiet;
    let notice = move |text: &str| {
        if !quiet {
            eprintln!("capsem: {text}");
        }
    };
    settings.warnings.iter().for_each(|w| notice(w));
    let backend = QemuBackend::locate().map_err(|e| {
        Failure::new(e).hint("sudo apt-get install qemu-system-x86 (or set CAPSEM_QEMU)")
    })?;
    let sandbox = Sandbox {
        vm: settings.vm(),
        sessions: settings.sessions(),
        manifest,
        asset_dir,
        backend: Arc::new(backend),
        home: paths::capsem_home(),
        started,
    };
    let io = ExecIo {
        stdin: Some(Box::new(tokio::io::stdin())),
        stdout: Box::new(tokio::io::stdout()),
        stderr: Box::new(tokio::io::stderr()),
        signals,
    };
    let timeout = args.timeout;
    let request = RunRequest {
        command,
        env: args.env,
        timeout,
    };
    let report = sandbox.run(request, io, &notice).await?;
    Ok(match report.outcome {
        Outcome::Exited(status) => i32::from(status.shell_code()),
        Outcome::TimedOut => {
            let secs = timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
            eprintln!("capsem: the command ran longer than {secs} s; the VM was destroyed");
            TIMED_OUT
        }
    })
}

/// Catches the signals a user sends to stop a command and queues them for
/// the guest, where they reach the command's process group.
fn forward_signals() -> Result<mpsc::Receiver<u8>, Failure> {
    let (tx, rx) = mpsc::channel(8);
    for kind in FORWARDED {
        let mut stream =
            signal(kind).map_err(|e| Failure::new(format!("installing a signal handler: {e}")))?;
        let tx = tx.clone();
        let number = kind.as_raw_value() as u8;
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(number).await.is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}
