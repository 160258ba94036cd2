//! Running one command in the guest: stdin out, stdout and stderr back, as
//! they are produced, until the exit status.
//!
//! Output is written to the host's streams chunk by chunk; while a host
//! stream blocks, the guest's stream window fills and the guest command
//! blocks too, so a flood of output never piles up in memory. When the host
//! stops taking stdout (a closed pipe), the guest closes the command's
//! stdout and the command sees `SIGPIPE`, as it would locally. On a
//! terminal, everything the command shows arrives as stdout. A command
//! that outlives its timeout has its process group killed; the channel and
//! the VM go on.

use std::convert::Infallible;
use std::time::Duration;

use capsem_proto::limits::MAX_CHUNK_BYTES;
use capsem_proto::{
    Command, ExecRequest, ExitStatus, GuestToHost, HostToGuest, ProtocolError, TtySize,
};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Channel, ChannelError};
use crate::session::transcript::{Record, Transcript};
use crate::session::{EventLog, ExecEvent};

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// The command.
    pub command: Command,
    /// Variables added to the guest's default environment.
    pub env: Vec<(String, String)>,
    /// Run it on a terminal of this size.
    pub tty: Option<TtySize>,
    /// Kill its process group if it runs longer than this.
    pub timeout: Option<Duration>,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited, or a signal killed it.
    Exited(ExitStatus),
    /// It ran past its timeout and its process group was killed.
    TimedOut,
}

/// How long a command killed at its timeout may take to report its end.
const KILL_GRACE: Duration = Duration::from_secs(2);
const SIGKILL: u8 = 9;

/// Something to tell a running command out of band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Deliver this signal to its process group.
    Signal(u8),
    /// Its terminal changed size.
    Resize(TtySize),
}

/// The host side of a command's stdio.
pub struct ExecIo {
    /// Bytes for the command's stdin; `None` gives it an empty stdin.
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Receives the command's stdout.
    pub stdout: Box<dyn AsyncWrite + Send + Unpin>,
    /// Receives the command's stderr.
    pub stderr: Box<dyn AsyncWrite + Send + Unpin>,
    /// Signals and resizes for the command.
    pub controls: mpsc::Receiver<Control>,
}

/// Where a command's activity is recorded.
#[derive(Clone, Copy)]
pub struct Recording<'a> {
    /// Counted events.
    pub events: &'a EventLog,
    /// The bytes of a terminal session.
    pub transcript: Option<&'a Transcript>,
}

impl Recording<'_> {
    fn transcribe(&self, record: impl FnOnce() -> Record) {
        if let Some(transcript) = self.transcript {
            transcript.record(&record());
        }
    }
}

/// Runs `spec`, recording what happens.
pub async fn run(
    channel: &Channel,
    spec: ExecSpec,
    io: ExecIo,
    recording: Recording<'_>,
) -> Result<Ended, ChannelError> {
    let id = channel.exec_id();
    let req = ExecRequest {
        id,
        command: spec.command,
        env: spec.env,
        tty: spec.tty,
    };
    req.validate()?;
    recording.events.exec(
        id,
        ExecEvent::Started {
            command: req.command.to_string(),
        },
    );
    if let Some(size) = spec.tty {
        recording.transcribe(|| Record::Resize {
            rows: size.rows,
            cols: size.cols,
        });
    }
    let (mut sink, source) = channel.open().await?.split();
    sink.send(HostToGuest::Exec(req)).await?;

    let (out_tx, mut out_rx) = mpsc::channel::<HostToGuest>(4);
    let forward = async move {
        while let Some(msg) = out_rx.recv().await {
            if sink.send(msg).await.is_err() {
                break;
            }
        }
    };
    let feed = feed_stdin(io.stdin, out_tx.clone(), id, recording);
    let background = async {
        futures::future::join(forward, feed).await;
        std::future::pending::<Infallible>().await
    };
    let outputs = Outputs {
        stdout: io.stdout,
        stderr: io.stderr,
        recording,
    };
    let receive = receive(
        Target {
            channel,
            id,
            timeout: spec.timeout,
        },
        source,
        outputs,
        io.controls,
        out_tx,
    );
    let ended = tokio::select! {
        result = receive => result?,
        never = background => match never {},
    };
    let event = match ended {
        Ended::Exited(status) => ExecEvent::Exited {
            code: status.shell_code(),
        },
        Ended::TimedOut => ExecEvent::TimedOut,
    };
    recording.events.exec(id, event);
    Ok(ended)
}

/// The command being received: where to send its controls, and its limit.
struct Target<'a> {
    channel: &'a Channel,
    id: u32,
    timeout: Option<Duration>,
}

async fn feed_stdin(
    stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    tx: mpsc::Sender<HostToGuest>,
    exec: u32,
    recording: Recording<'_>,
) {
    if let Some(mut stdin) = stdin {
        let mut buf = vec![0u8; MAX_CHUNK_BYTES];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    recording.events.exec(exec, ExecEvent::Stdin { bytes: n });
                    recording.transcribe(|| Record::Input(buf[..n].to_vec()));
                    if tx
                        .send(HostToGuest::Stdin(buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
    let _ = tx.send(HostToGuest::StdinEof).await;
}

/// Where a command's output goes.
struct Outputs<'a> {
    stdout: Box<dyn AsyncWrite + Send + Unpin>,
    stderr: Box<dyn AsyncWrite + Send + Unpin>,
    recording: Recording<'a>,
}

async fn receive(
    cmd: Target<'_>,
    mut source: futures::stream::SplitStream<super::Stream>,
    mut out: Outputs<'_>,
    mut controls: mpsc::Receiver<Control>,
    out_tx: mpsc::Sender<HostToGuest>,
) -> Result<Ended, ChannelError> {
    let Target {
        channel,
        id,
        timeout,
    } = cmd;
    let mut stdout_open = true;
    // Armed at the timeout; once it fires, re-armed for the kill's grace.
    let limit = tokio::time::sleep(timeout.unwrap_or(Duration::MAX));
    tokio::pin!(limit);
    let mut killed = false;
    loop {
        tokio::select! {
            () = &mut limit, if timeout.is_some() => {
                if killed {
                    return Ok(Ended::TimedOut);
                }
                killed = true;
                channel.control(HostToGuest::Signal { exec: id, signal: SIGKILL }).await?;
                limit.as_mut().reset(tokio::time::Instant::now() + KILL_GRACE);
            }
            msg = source.next() => {
                let msg = msg.ok_or(ChannelError::Closed)??;
                msg.validate()?;
                match msg {
                    GuestToHost::Stdout(data) => {
                        let events = out.recording.events;
                        events.exec(id, ExecEvent::Stdout { bytes: data.len() });
                        out.recording.transcribe(|| Record::Output(data.clone()));
                        if stdout_open && write_chunk(&mut out.stdout, &data).await.is_err() {
                            stdout_open = false;
                            let _ = out_tx.send(HostToGuest::StdoutClosed).await;
                        }
                    }
                    GuestToHost::Stderr(data) => {
                        let events = out.recording.events;
                        events.exec(id, ExecEvent::Stderr { bytes: data.len() });
                        // A closed stderr is no reason to disturb the command.
                        let _ = write_chunk(&mut out.stderr, &data).await;
                    }
                    GuestToHost::Exited(_) if killed => return Ok(Ended::TimedOut),
                    GuestToHost::Exited(status) => return Ok(Ended::Exited(status)),
                    GuestToHost::Refused(reason) => return Err(ChannelError::Refused(reason)),
                    GuestToHost::Done
                    | GuestToHost::Data(_)
                    | GuestToHost::Connect(_)
                    | GuestToHost::Resolve { .. }
                    | GuestToHost::Fs(_)
                    | GuestToHost::Blocked { .. } => {
                        return Err(ProtocolError::Unexpected("a network or copy message on an exec stream").into());
                    }
                }
            }
            Some(control) = controls.recv() => {
                let msg = match control {
                    Control::Signal(signal) => {
                        out.recording.events.exec(id, ExecEvent::Signal { signal });
                        HostToGuest::Signal { exec: id, signal }
                    }
                    Control::Resize(size) => {
                        out.recording.transcribe(|| Record::Resize { rows: size.rows, cols: size.cols });
                        HostToGuest::Resize { exec: id, size }
                    }
                };
                channel.control(msg).await?;
            }
        }
    }
}

async fn write_chunk(out: &mut (impl AsyncWrite + Unpin), data: &[u8]) -> std::io::Result<()> {
    out.write_all(data).await?;
    out.flush().await
}
