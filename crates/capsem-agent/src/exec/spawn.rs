//! Starting a command: with pipes, or on a new pseudo-terminal.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command as Process, Stdio};

use capsem_proto::{Command, ExecRequest, ExitStatus, TtySize};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::pipe::{PipeReader, PipeWriter};
use crate::reap::Reaper;

/// The environment every command starts from; the request adds to it.
const DEFAULT_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("TERM", "xterm-256color"),
    ("LANG", "C.UTF-8"),
    ("USER", "root"),
    ("SHELL", "/bin/bash"),
    // The system is the agent's to change (an overlay over the image):
    // `uv pip install` installs into it, as `pip install` does.
    ("UV_SYSTEM_PYTHON", "1"),
    // Clients that bring their own CA list still trust the host's proxy.
    ("SSL_CERT_FILE", crate::net::trust::BUNDLE),
    ("REQUESTS_CA_BUNDLE", crate::net::trust::BUNDLE),
    ("NODE_EXTRA_CA_CERTS", crate::net::trust::BUNDLE),
];
/// Where commands start, unless a workspace is mounted: then in it.
const WORKDIR: &str = "/root";

/// A started command and the agent's ends of its stdio.
pub struct Started {
    /// The command's pid, also its process group.
    pub pid: Pid,
    /// Its exit status, once it has one.
    pub exit: oneshot::Receiver<ExitStatus>,
    /// Where its input goes.
    pub stdin: PipeWriter,
    /// Its output (stdout, or everything on a terminal).
    pub stdout: PipeReader,
    /// Its stderr, when it is not on a terminal.
    pub stderr: Option<PipeReader>,
    /// Its terminal, for resizing.
    pub terminal: Option<OwnedFd>,
}

/// Starts `req`.
pub fn start(req: &ExecRequest, reaper: &Reaper) -> io::Result<Started> {
    match req.tty {
        None => start_piped(req, reaper),
        Some(size) => start_on_terminal(req, size, reaper),
    }
}

fn process(req: &ExecRequest) -> Process {
    let mut process = match &req.command {
        Command::Shell(line) => {
            let mut p = Process::new("/bin/bash");
            p.arg("-c").arg(line);
            p
        }
        Command::Argv(argv) => {
            let mut p = Process::new(&argv[0]);
            p.args(&argv[1..]);
            p
        }
    };
    process
        .env_clear()
        .envs(DEFAULT_ENV.iter().copied())
        .envs(crate::workspace::env().iter().copied())
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .current_dir(crate::workspace::workdir().unwrap_or(WORKDIR));
    process
}

fn start_piped(req: &ExecRequest, reaper: &Reaper) -> io::Result<Started> {
    let mut process = process(req);
    process
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a forwarded signal reaches the whole
        // pipeline the command starts, as Ctrl-C does in a terminal.
        .process_group(0);
    let (mut child, exit) = reaper.spawn(&mut process)?;
    let pid = Pid::from_raw(child.id() as i32);
    let wrapped = (|| {
        let missing = || io::Error::other("stdio was not piped");
        Ok::<_, io::Error>((
            PipeWriter::new(child.stdin.take().ok_or_else(missing)?)?,
            PipeReader::new(child.stdout.take().ok_or_else(missing)?)?,
            PipeReader::new(child.stderr.take().ok_or_else(missing)?)?,
        ))
    })();
    let (stdin, stdout, stderr) = wrapped.inspect_err(|_| {
        // Nobody could serve its stdio: stop it rather than leave it hanging.
        let _ = killpg(pid, Signal::SIGKILL);
    })?;
    Ok(Started {
        pid,
        exit,
        stdin,
        stdout,
        stderr: Some(stderr),
        terminal: None,
    })
}

fn start_on_terminal(req: &ExecRequest, size: TtySize, reaper: &Reaper) -> io::Result<Started> {
    let winsize = nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&winsize, None)?;
    let stdin = PipeWriter::new(pty.master.try_clone()?)?;
    let stdout = PipeReader::new(pty.master.try_clone()?)?;
    let mut process = process(req);
    process
        .stdin(Stdio::from(pty.slave.try_clone()?))
        .stdout(Stdio::from(pty.slave.try_clone()?))
        .stderr(Stdio::from(pty.slave));
    // SAFETY: runs in the child between fork and exec; setsid(2) and the
    // TIOCSCTTY ioctl(2) are plain system calls that neither allocate nor
    // lock. stdin is the terminal's slave side, set up by std before this.
    unsafe {
        process.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(std::io::stdin())?;
            Ok(())
        });
    }
    let (child, exit) = reaper.spawn(&mut process)?;
    // The slave must close here too, or reading the terminal would never
    // end once the command has.
    drop(process);
    Ok(Started {
        pid: Pid::from_raw(child.id() as i32),
        exit,
        stdin,
        stdout,
        stderr: None,
        terminal: Some(pty.master),
    })
}

/// Exit code and message for a command that could not start, as bash
/// reports them.
pub fn failure(command: &Command, err: &io::Error) -> (u8, String) {
    let program = match command {
        Command::Shell(_) => "/bin/bash",
        Command::Argv(argv) => &argv[0],
    };
    match err.kind() {
        io::ErrorKind::NotFound => (127, format!("capsem: {program}: command not found\n")),
        _ => (126, format!("capsem: {program}: {err}\n")),
    }
}
