//! Running one command in the guest: stdin out, stdout and stderr back, as
//! they are produced, until the exit status.
//!
//! Output is written to the host's streams chunk by chunk; while a host
//! stream blocks, the guest's stream window fills and the guest command
//! blocks too, so a flood of output never piles up in memory. When the host
//! stops taking stdout (a closed pipe), the guest closes the command's
//! stdout and the command sees `SIGPIPE`, as it would locally.

use std::convert::Infallible;

use capsem_proto::limits::MAX_CHUNK_BYTES;
use capsem_proto::{Command, ExecRequest, ExitStatus, GuestToHost, HostToGuest};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Channel, ChannelError};
use crate::session::{Event, EventLog};

/// The host side of a command's stdio.
pub struct ExecIo {
    /// Bytes for the command's stdin; `None` gives it an empty stdin.
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Receives the command's stdout.
    pub stdout: Box<dyn AsyncWrite + Send + Unpin>,
    /// Receives the command's stderr.
    pub stderr: Box<dyn AsyncWrite + Send + Unpin>,
    /// Signal numbers to deliver to the command's process group.
    pub signals: mpsc::Receiver<u8>,
}

/// Runs `command` with `env` added to the guest's default environment,
/// recording what happens in `events`.
pub async fn run(
    channel: &mut Channel,
    command: Command,
    env: Vec<(String, String)>,
    io: ExecIo,
    events: &EventLog,
) -> Result<ExitStatus, ChannelError> {
    let id = channel.exec_id();
    let req = ExecRequest { id, command, env };
    req.validate()?;
    events.record(Event::Started {
        exec: id,
        command: req.command.to_string(),
    });
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
    let feed = feed_stdin(io.stdin, out_tx.clone(), id, events);
    let background = async {
        futures::future::join(forward, feed).await;
        std::future::pending::<Infallible>().await
    };
    let outputs = Outputs {
        stdout: io.stdout,
        stderr: io.stderr,
        events,
    };
    let receive = receive(channel, id, source, outputs, io.signals, out_tx);
    let status = tokio::select! {
        result = receive => result?,
        never = background => match never {},
    };
    events.record(Event::Exited {
        exec: id,
        code: status.shell_code(),
    });
    Ok(status)
}

async fn feed_stdin(
    stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    tx: mpsc::Sender<HostToGuest>,
    exec: u32,
    events: &EventLog,
) {
    if let Some(mut stdin) = stdin {
        let mut buf = vec![0u8; MAX_CHUNK_BYTES];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    events.record(Event::Stdin { exec, bytes: n });
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
    events: &'a EventLog,
}

async fn receive(
    channel: &mut Channel,
    id: u32,
    mut source: futures::stream::SplitStream<super::Stream>,
    mut out: Outputs<'_>,
    mut signals: mpsc::Receiver<u8>,
    out_tx: mpsc::Sender<HostToGuest>,
) -> Result<ExitStatus, ChannelError> {
    let mut stdout_open = true;
    loop {
        tokio::select! {
            msg = source.next() => {
                let msg = msg.ok_or(ChannelError::Closed)??;
                msg.validate()?;
                match msg {
                    GuestToHost::Stdout(data) => {
                        out.events.record(Event::Stdout { exec: id, bytes: data.len() });
                        if stdout_open && write_chunk(&mut out.stdout, &data).await.is_err() {
                            stdout_open = false;
                            let _ = out_tx.send(HostToGuest::StdoutClosed).await;
                        }
                    }
                    GuestToHost::Stderr(data) => {
                        out.events.record(Event::Stderr { exec: id, bytes: data.len() });
                        // A closed stderr is no reason to disturb the command.
                        let _ = write_chunk(&mut out.stderr, &data).await;
                    }
                    GuestToHost::Exited(status) => return Ok(status),
                    GuestToHost::Refused(reason) => return Err(ChannelError::Refused(reason)),
                }
            }
            Some(signal) = signals.recv() => {
                out.events.record(Event::Signal { exec: id, signal });
                channel.control(HostToGuest::Signal { exec: id, signal }).await?;
            }
        }
    }
}

async fn write_chunk(out: &mut (impl AsyncWrite + Unpin), data: &[u8]) -> std::io::Result<()> {
    out.write_all(data).await?;
    out.flush().await
}
