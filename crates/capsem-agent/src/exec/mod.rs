//! Running one command for the host, on its own stream.
//!
//! stdout and stderr are pumped in chunks as they are produced; stdin flows
//! the other way. When the command exits, what it left in its pipes is
//! drained (but background processes that keep the pipes open are not waited
//! for), then [`GuestToHost::Exited`] ends the stream.

mod running;
mod spawn;

use std::time::{Duration, Instant};

use capsem_proto::limits::MAX_CHUNK_BYTES;
use capsem_proto::{ExecRequest, ExitStatus, GuestCodec, GuestToHost, HostToGuest};
use futures::{SinkExt, Stream, StreamExt};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::Framed;
use tokio_util::compat::Compat;

pub use running::Running;

use crate::pipe::{PipeReader, PipeWriter};
use crate::reap::Reaper;

/// One multiplexed stream, framed with the guest's codec.
pub type Channel = Framed<Compat<capsem_proto::mux::Stream>, GuestCodec>;

/// Longest time spent draining pipes after the command exited, for the case
/// where a background process keeps writing.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Runs `req` and reports on `channel` until it has exited.
pub async fn run(channel: Channel, req: ExecRequest, reaper: &Reaper, running: &Running) {
    let (mut sink, incoming) = channel.split();
    if let Err(e) = req.validate() {
        let _ = sink.send(GuestToHost::Refused(e.to_string())).await;
        return;
    }
    let started = match spawn::start(&req, reaper) {
        Ok(started) => started,
        Err(e) => {
            let (code, text) = spawn::failure(&req.command, &e);
            let _ = sink.send(GuestToHost::Stderr(text.into_bytes())).await;
            let _ = sink.send(GuestToHost::Exited(ExitStatus::Code(code))).await;
            return;
        }
    };
    // With its output gone, a terminal session is hung up, as a closed
    // terminal window would: its writes would otherwise block forever.
    let hangup = started.terminal.is_some().then_some(started.pid);
    running.insert(req.id, started.pid, started.terminal);
    let outputs = (started.stdout, started.stderr);
    let input = Input {
        incoming,
        stdin: started.stdin,
        hangup,
    };
    let status = supervise(&mut sink, input, outputs, started.exit).await;
    running.remove(req.id);
    let _ = sink.send(GuestToHost::Exited(status)).await;
    let _ = sink.close().await;
}

/// The host's side of a command's input.
struct Input<S> {
    /// Messages from the host on the exec stream.
    incoming: S,
    /// The command's stdin.
    stdin: PipeWriter,
    /// The process group to hang up when the host stops reading output.
    hangup: Option<Pid>,
}

/// Moves data until the command has exited and its output is drained.
async fn supervise(
    sink: &mut (impl futures::Sink<GuestToHost> + Unpin),
    input: Input<impl Stream<Item = Result<HostToGuest, capsem_proto::FrameError>> + Unpin>,
    (stdout, stderr): (PipeReader, Option<PipeReader>),
    exit: oneshot::Receiver<ExitStatus>,
) -> ExitStatus {
    let (out_tx, mut out_rx) = mpsc::channel::<GuestToHost>(4);
    let (exited_tx, exited_rx) = watch::channel(false);
    let (closed_tx, closed_rx) = oneshot::channel();
    let stdout_pump = pump(
        stdout,
        GuestToHost::Stdout,
        out_tx.clone(),
        exited_rx.clone(),
        Some(closed_rx),
    );
    // The last sender moves into the stderr pump, so the forwarding below
    // ends once both pumps have.
    let stderr_pump = async move {
        if let Some(stderr) = stderr {
            pump(stderr, GuestToHost::Stderr, out_tx, exited_rx, None).await;
        }
    };
    let pumps = futures::future::join(stdout_pump, stderr_pump);
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
    let input = feed_stdin(input, closed_tx);
    tokio::select! {
        (status, _, _) = async { tokio::join!(work, pumps, forward) } => status,
        never = input => match never {},
    }
}

/// A terminal's end-of-file character (Ctrl-D, the default `VEOF`).
const VEOF: u8 = 0x04;

/// Copies host messages to the command's stdin. Never returns; it is
/// dropped when the command has finished.
async fn feed_stdin(
    input: Input<impl Stream<Item = Result<HostToGuest, capsem_proto::FrameError>> + Unpin>,
    closed_tx: oneshot::Sender<()>,
) -> std::convert::Infallible {
    let Input {
        mut incoming,
        stdin,
        hangup,
    } = input;
    let mut stdin = Some(stdin);
    let mut closed_tx = Some(closed_tx);
    // Whether the input so far ends a line (a terminal's EOF key ends
    // input only at the start of one).
    let mut at_line_start = true;
    while let Some(msg) = incoming.next().await {
        match msg {
            Ok(HostToGuest::Stdin(data)) => {
                if let Some(last) = data.last() {
                    at_line_start = *last == b'\n';
                }
                if let Some(pipe) = &stdin
                    && pipe.write_all(&data).await.is_err()
                {
                    // The command closed its stdin; drop what else comes.
                    stdin = None;
                }
            }
            Ok(HostToGuest::StdinEof) => {
                // Closing a terminal's master ends nothing (the agent holds
                // it open); its EOF key does, as Ctrl-D at a prompt: once
                // at a line's start, twice after unfinished input.
                if let (Some(pipe), Some(_)) = (&stdin, hangup) {
                    let eof: &[u8] = if at_line_start {
                        &[VEOF]
                    } else {
                        &[VEOF, VEOF]
                    };
                    let _ = pipe.write_all(eof).await;
                }
                stdin = None;
            }
            Ok(HostToGuest::StdoutClosed) => {
                if let Some(tx) = closed_tx.take() {
                    let _ = tx.send(());
                }
                if let Some(group) = hangup {
                    let _ = killpg(group, Signal::SIGHUP);
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
                let n = n + pipe.read_available(&mut buf[n..]);
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
