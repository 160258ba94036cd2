//! Running one command for the host, on its own stream.
//!
//! stdout and stderr are pumped in chunks as they are produced; stdin flows
//! the other way. When the command exits, what it left in its pipes is
//! drained (but background processes that keep the pipes open are not waited
//! for), then [`GuestToHost::Exited`] ends the stream.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command as Process, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use capsem_proto::limits::MAX_CHUNK_BYTES;
use capsem_proto::{Command, ExecRequest, ExitStatus, GuestCodec, GuestToHost, HostToGuest};
use futures::{SinkExt, Stream, StreamExt};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::Framed;
use tokio_util::compat::Compat;

use crate::pipe::{PipeReader, PipeWriter};
use crate::reap::Reaper;

/// One multiplexed stream, framed with the guest's codec.
pub type Channel = Framed<Compat<capsem_proto::mux::Stream>, GuestCodec>;

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
];
const WORKDIR: &str = "/root";
/// Longest time spent draining pipes after the command exited, for the case
/// where a background process keeps writing.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Running commands by exec id, so signals from the control stream reach
/// their process group.
#[derive(Clone, Default)]
pub struct Running {
    groups: Arc<Mutex<HashMap<u32, Pid>>>,
}

impl Running {
    fn insert(&self, exec: u32, pid: Pid) {
        self.lock().insert(exec, pid);
    }

    fn remove(&self, exec: u32) {
        self.lock().remove(&exec);
    }

    /// Sends `signal` to the process group of command `exec`, if it runs.
    pub fn signal(&self, exec: u32, signal: u8) {
        let Some(pid) = self.lock().get(&exec).copied() else {
            return;
        };
        match Signal::try_from(i32::from(signal)) {
            // The group may be gone already; that is not an error.
            Ok(sig) => drop(killpg(pid, sig)),
            Err(_) => tracing::warn!("ignoring unknown signal {signal}"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Pid>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs `req` and reports on `channel` until it has exited.
pub async fn run(channel: Channel, req: ExecRequest, reaper: &Reaper, running: &Running) {
    let (mut sink, incoming) = channel.split();
    if let Err(e) = req.validate() {
        let _ = sink.send(GuestToHost::Refused(e.to_string())).await;
        return;
    }
    let mut process = build(&req);
    let (mut child, exit) = match reaper.spawn(&mut process) {
        Ok(spawned) => spawned,
        Err(e) => {
            let (code, text) = spawn_failure(&req.command, &e);
            let _ = sink.send(GuestToHost::Stderr(text.into_bytes())).await;
            let _ = sink.send(GuestToHost::Exited(ExitStatus::Code(code))).await;
            return;
        }
    };
    running.insert(req.id, Pid::from_raw(child.id() as i32));
    let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
        unreachable!("all three stdio streams are piped")
    };
    let status = match (
        PipeWriter::new(stdin),
        PipeReader::new(stdout),
        PipeReader::new(stderr),
    ) {
        (Ok(stdin), Ok(stdout), Ok(stderr)) => {
            let status = supervise(&mut sink, incoming, stdin, stdout, stderr, exit).await;
            Some(status)
        }
        _ => None,
    };
    running.remove(req.id);
    let status = status.unwrap_or(ExitStatus::Code(126));
    let _ = sink.send(GuestToHost::Exited(status)).await;
    let _ = sink.close().await;
}

fn build(req: &ExecRequest) -> Process {
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
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .current_dir(WORKDIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a forwarded signal reaches the whole
        // pipeline the command starts, as Ctrl-C does in a terminal.
        .process_group(0);
    process
}

/// Exit code and message for a command that could not start, as bash
/// reports them.
fn spawn_failure(command: &Command, err: &io::Error) -> (u8, String) {
    let program = match command {
        Command::Shell(_) => "/bin/bash",
        Command::Argv(argv) => &argv[0],
    };
    match err.kind() {
        io::ErrorKind::NotFound => (127, format!("capsem: {program}: command not found\n")),
        _ => (126, format!("capsem: {program}: {err}\n")),
    }
}

/// Moves data until the command has exited and its output is drained.
async fn supervise(
    sink: &mut (impl futures::Sink<GuestToHost> + Unpin),
    incoming: impl Stream<Item = Result<HostToGuest, capsem_proto::FrameError>> + Unpin,
    stdin: PipeWriter,
    stdout: PipeReader,
    stderr: PipeReader,
    exit: oneshot::Receiver<ExitStatus>,
) -> ExitStatus {
    let (out_tx, mut out_rx) = mpsc::channel::<GuestToHost>(4);
    let (exited_tx, exited_rx) = watch::channel(false);
    let (closed_tx, closed_rx) = oneshot::channel();
    let pumps = futures::future::join(
        pump(
            stdout,
            GuestToHost::Stdout,
            out_tx.clone(),
            exited_rx.clone(),
            Some(closed_rx),
        ),
        pump(stderr, GuestToHost::Stderr, out_tx, exited_rx, None),
    );
    let work = async {
        // A lost reaper cannot happen while the runtime lives; report it as
        // a failure to run rather than hang.
        let status = exit.await.unwrap_or(ExitStatus::Code(126));
        let _ = exited_tx.send(true);
        status
    };
    let forward = async {
        while let Some(msg) = out_rx.recv().await {
            if sink.send(msg).await.is_err() {
                break;
            }
        }
    };
    let input = feed_stdin(incoming, stdin, closed_tx);
    tokio::select! {
        (status, _, _) = async { tokio::join!(work, pumps, forward) } => status,
        never = input => match never {},
    }
}

/// Copies host messages to the command's stdin. Never returns; it is
/// dropped when the command has finished.
async fn feed_stdin(
    mut incoming: impl Stream<Item = Result<HostToGuest, capsem_proto::FrameError>> + Unpin,
    stdin: PipeWriter,
    closed_tx: oneshot::Sender<()>,
) -> std::convert::Infallible {
    let mut stdin = Some(stdin);
    let mut closed_tx = Some(closed_tx);
    while let Some(msg) = incoming.next().await {
        match msg {
            Ok(HostToGuest::Stdin(data)) => {
                if let Some(pipe) = &stdin
                    && pipe.write_all(&data).await.is_err()
                {
                    // The command closed its stdin; drop what else comes.
                    stdin = None;
                }
            }
            Ok(HostToGuest::StdinEof) => stdin = None,
            Ok(HostToGuest::StdoutClosed) => {
                if let Some(tx) = closed_tx.take() {
                    let _ = tx.send(());
                }
            }
            Ok(other) => tracing::warn!("ignoring {other:?} on an exec stream"),
            Err(e) => {
                tracing::warn!("exec stream from the host failed: {e}");
                break;
            }
        }
    }
    drop(stdin);
    std::future::pending().await
}

/// Forwards one output pipe as messages built by `wrap`.
async fn pump(
    pipe: PipeReader,
    wrap: fn(Vec<u8>) -> GuestToHost,
    tx: mpsc::Sender<GuestToHost>,
    mut exited: watch::Receiver<bool>,
    closed: Option<oneshot::Receiver<()>>,
) {
    let mut buf = vec![0u8; MAX_CHUNK_BYTES];
    let closed = async {
        match closed {
            Some(rx) => drop(rx.await),
            None => std::future::pending().await,
        }
    };
    tokio::pin!(closed);
    loop {
        let read = tokio::select! {
            read = pipe.read(&mut buf) => read,
            _ = exited.wait_for(|done| *done) => break,
            () = &mut closed => return,
        };
        match read {
            Ok(n) if n > 0 => {
                if tx.send(wrap(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
    let deadline = Instant::now() + DRAIN_LIMIT;
    while Instant::now() < deadline {
        match pipe.read_now(&mut buf) {
            Ok(Some(n)) if n > 0 => {
                if tx.send(wrap(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}
