//! An exec WebSocket and the command it runs: [`serve_exec`] on the
//! supervisor, [`relay`] in the service between a client and the
//! supervisor.
//!
//! Stdin, stdout and stderr pass through bounded pipes, so a client that
//! reads slowly stalls the command (the guest's stream window fills) and
//! one that floods stdin waits, as they would with a local process.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use capsem_core::channel::{Control, ExecIo, ExecSpec};
use capsem_core::{Live, Outcome, RunError};
use capsem_proto::TtySize;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as TMessage;

use crate::api::{ClientMsg, ExecStart, STDERR, STDOUT, ServerMsg};
use crate::client::Socket;

/// Largest WebSocket message a client may send (axum's default is
/// 64 MiB, which one connection could make the service hold): stdin in
/// bigger writes is split by the client anyway.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Bytes buffered on each of stdin, stdout and stderr.
const PIPE_BYTES: usize = 64 * 1024;
/// How long a client may take to send its [`ExecStart`].
const START_WAIT: Duration = Duration::from_secs(30);

/// Runs the command the client asks for on `socket` in `live`, with
/// `base_env` under the client's variables.
pub async fn serve_exec(mut socket: WebSocket, live: &Live, base_env: &[(String, String)]) {
    let start = match read_start(&mut socket).await {
        Ok(start) => start,
        Err(message) => return refuse(socket, message).await,
    };
    let mut env = base_env.to_vec();
    env.extend(start.env);
    let spec = ExecSpec {
        command: start.command,
        env,
        tty: start.tty,
        timeout: start.timeout_ms.map(Duration::from_millis),
    };
    let (stdin_tx, stdin_rx) = tokio::io::duplex(PIPE_BYTES);
    let (stdout_tx, stdout_rx) = tokio::io::duplex(PIPE_BYTES);
    let (stderr_tx, stderr_rx) = tokio::io::duplex(PIPE_BYTES);
    let (controls_tx, controls) = mpsc::channel(8);
    let io = ExecIo {
        stdin: Some(Box::new(stdin_rx)),
        stdout: Box::new(stdout_tx),
        stderr: Box::new(stderr_tx),
        controls,
    };
    let (sink, stream) = socket.split();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let inputs = tokio::spawn(read_inputs(stream, stdin_tx, controls_tx, closed_tx));
    let outputs = tokio::spawn(pump_outputs(sink, stdout_rx, stderr_rx, closed_rx));
    let last = last_message(live.exec(spec, io, None).await);
    inputs.abort();
    // The command's pipes closed with its end: the pump drains them.
    let Ok(mut sink) = outputs.await else { return };
    if let Ok(text) = serde_json::to_string(&last) {
        let _ = sink.send(Message::Text(text.into())).await;
    }
    let _ = sink.close().await;
}

/// The last message of a command that ended so.
pub fn last_message(result: Result<Outcome, RunError>) -> ServerMsg {
    match result {
        Ok(Outcome::Exited(status)) => ServerMsg::exited(status),
        Ok(Outcome::TimedOut) => ServerMsg::TimedOut,
        Ok(Outcome::Interrupted(signal)) => {
            ServerMsg::exited(capsem_proto::ExitStatus::Signal(signal))
        }
        Err(e) => ServerMsg::Error {
            message: e.to_string(),
        },
    }
}

/// What a client's signal or resize asks of the command.
pub fn control_of(message: ClientMsg) -> Option<Control> {
    match message {
        ClientMsg::Signal { signal } => Some(Control::Signal(signal)),
        ClientMsg::Resize { rows, cols } => Some(Control::Resize(TtySize { rows, cols })),
        ClientMsg::StdinEof | ClientMsg::StdoutClosed => None,
    }
}

/// The client's first message: what to run.
pub async fn read_start(socket: &mut WebSocket) -> Result<ExecStart, String> {
    let first = tokio::time::timeout(START_WAIT, socket.recv())
        .await
        .map_err(|_| "no command arrived".to_owned())?;
    match first {
        Some(Ok(Message::Text(text))) => {
            // The agent's request checks (command, environment) run when
            // the command is sent.
            serde_json::from_str(&text).map_err(|e| format!("a bad exec request: {e}"))
        }
        _ => Err("the first message must be the exec request, as JSON text".to_owned()),
    }
}

/// Ends `socket` with an error message for its client.
pub async fn refuse(mut socket: WebSocket, message: String) {
    let text = serde_json::to_string(&ServerMsg::Error { message }).unwrap_or_default();
    let _ = socket.send(Message::Text(text.into())).await;
    let _ = socket.close().await;
}

/// Client messages into the command's stdin and controls.
async fn read_inputs(
    mut stream: futures::stream::SplitStream<WebSocket>,
    stdin: DuplexStream,
    controls: mpsc::Sender<Control>,
    stdout_closed: tokio::sync::oneshot::Sender<()>,
) {
    let mut stdin = Some(stdin);
    let mut stdout_closed = Some(stdout_closed);
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Binary(data) => {
                if let Some(pipe) = stdin.as_mut()
                    && pipe.write_all(&data).await.is_err()
                {
                    stdin = None;
                }
            }
            Message::Text(text) => match serde_json::from_str::<ClientMsg>(&text) {
                Ok(ClientMsg::StdinEof) => stdin = None,
                Ok(ClientMsg::StdoutClosed) => {
                    if let Some(tx) = stdout_closed.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(message) => {
                    if let Some(control) = control_of(message) {
                        let _ = controls.send(control).await;
                    }
                }
                Err(e) => tracing::warn!("an exec client sent a bad message: {e}"),
            },
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
    // A client gone is a hang-up, as a closed terminal would be.
    let _ = controls.send(Control::Signal(1)).await;
}

/// The command's output to the client, until both pipes end; returns the
/// sink for the final message. Once the client closes stdout, stdout's
/// pipe is dropped, and the command's next write fails (SIGPIPE).
async fn pump_outputs(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    stdout: DuplexStream,
    mut stderr: DuplexStream,
    stdout_closed: tokio::sync::oneshot::Receiver<()>,
) -> futures::stream::SplitSink<WebSocket, Message> {
    let mut stdout = Some(stdout);
    let mut stdout_closed = Some(stdout_closed);
    let mut stderr_open = true;
    let (mut out_buf, mut err_buf) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
    while stdout.is_some() || stderr_open {
        let chunk = tokio::select! {
            n = async { stdout.as_mut().expect("guarded").read(&mut out_buf[1..]).await }, if stdout.is_some() => match n {
                Ok(0) | Err(_) => { stdout = None; continue }
                Ok(n) => { out_buf[0] = STDOUT; out_buf[..=n].to_vec() }
            },
            n = stderr.read(&mut err_buf[1..]), if stderr_open => match n {
                Ok(0) | Err(_) => { stderr_open = false; continue }
                Ok(n) => { err_buf[0] = STDERR; err_buf[..=n].to_vec() }
            },
            // The sender is also dropped when the command ends: only a
            // message means the client closed stdout.
            closed = async { stdout_closed.as_mut().expect("guarded").await }, if stdout_closed.is_some() => {
                stdout_closed = None;
                if closed.is_ok() {
                    stdout = None;
                }
                continue
            }
        };
        if sink.send(Message::Binary(chunk.into())).await.is_err() {
            // The client is gone; keep draining so the command is not
            // stuck writing (its hang-up is on the way).
            drop(stdout.take());
            let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
            break;
        }
    }
    sink
}

/// Carries an exec WebSocket between a client and a supervisor, both
/// ways, until either side ends.
pub async fn relay(client: WebSocket, upstream: Socket) {
    let (mut client_tx, mut client_rx) = client.split();
    let (mut up_tx, mut up_rx) = upstream.split();
    let to_upstream = async {
        while let Some(Ok(msg)) = client_rx.next().await {
            let msg = match msg {
                Message::Text(text) => TMessage::Text(text.as_str().into()),
                Message::Binary(data) => TMessage::Binary(data),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if up_tx.send(msg).await.is_err() {
                break;
            }
        }
        let _ = up_tx.close().await;
    };
    let to_client = async {
        while let Some(Ok(msg)) = up_rx.next().await {
            let msg = match msg {
                TMessage::Text(text) => Message::Text(text.as_str().into()),
                TMessage::Binary(data) => Message::Binary(data),
                TMessage::Close(_) => break,
                _ => continue,
            };
            if client_tx.send(msg).await.is_err() {
                break;
            }
        }
        let _ = client_tx.close().await;
    };
    // The supervisor's side ends an exec; a client that leaves ends it too.
    tokio::select! {
        () = to_client => {}
        () = to_upstream => {}
    }
}
