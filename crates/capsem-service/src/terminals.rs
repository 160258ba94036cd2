//! Terminals that outlive their clients: a command on a terminal in the
//! sandbox (a login shell, for the web UI), kept by the supervisor with
//! its recent output, that clients attach to and detach from. A page that
//! reloads attaches again and finds the shell as it left it.
//!
//! Unlike an exec, a client that goes away does not hang the command up;
//! it ends when it exits, when a client hangs it up (`{"type": "signal",
//! "signal": 1}`: SIGHUP, and the host cuts it off [`HANGUP_GRACE`] later
//! if the guest ignores that), or with the sandbox. What the guest writes
//! while nobody is attached is drained into a bounded scrollback, so an
//! unwatched shell never stalls; an attached client that reads slowly
//! holds at most [`LIVE_CHUNKS`] pieces of output before it skips ahead.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use capsem_core::channel::{Control, ExecIo, ExecSpec};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{broadcast, mpsc};

use crate::api::{ClientMsg, STDOUT, ServerMsg};
use crate::bridge;

/// Most terminals one sandbox keeps at once; one more is refused.
pub const MAX_TERMINALS: usize = 16;
/// Output kept for a client that attaches later, per terminal.
pub const SCROLLBACK_BYTES: usize = 256 * 1024;
/// Output pieces (at most 32 KiB each) queued for attached clients that
/// read slowly; past this a client skips ahead (and is told so). With the
/// scrollback, a terminal holds at most about 2.3 MiB.
pub const LIVE_CHUNKS: usize = 64;
/// How long a hung-up command may take to end before the host stops
/// waiting for it (a guest can ignore SIGHUP).
pub const HANGUP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
const SIGHUP: u8 = 1;
/// Bytes buffered on the command's stdin.
const STDIN_BYTES: usize = 64 * 1024;

/// The terminals of one sandbox.
#[derive(Default)]
pub struct Terminals {
    open: Arc<Mutex<HashMap<u32, Arc<Term>>>>,
}

struct Term {
    stdin: tokio::sync::Mutex<DuplexStream>,
    controls: mpsc::Sender<Control>,
    screen: Mutex<Screen>,
    /// The command's task, cut off when a hang-up is ignored.
    command: Mutex<Option<tokio::task::AbortHandle>>,
}

/// What an attaching client is sent first, and how it follows the rest.
struct Screen {
    scrollback: VecDeque<u8>,
    live: broadcast::Sender<Event>,
    /// The command's last message, once it ended.
    ended: Option<ServerMsg>,
}

#[derive(Clone)]
enum Event {
    Output(Bytes),
    Ended(ServerMsg),
}

/// The terminal could not be opened or attached.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// No terminal has this id (it ended, or never was).
    #[error("no terminal {0} is open in this sandbox (it ended)")]
    Gone(u32),
    /// [`MAX_TERMINALS`] are open.
    #[error(
        "{MAX_TERMINALS} terminals are open in this sandbox, as many as it keeps: close one first"
    )]
    Full,
}

impl Terminals {
    /// Starts `spec` (on a terminal) through `run`, which resolves to the
    /// command's last message; returns its id.
    pub fn open<F, Fut>(&self, spec: ExecSpec, run: F) -> Result<u32, TerminalError>
    where
        F: FnOnce(ExecSpec, ExecIo) -> Fut,
        Fut: Future<Output = ServerMsg> + Send + 'static,
    {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.len() >= MAX_TERMINALS {
            return Err(TerminalError::Full);
        }
        // Random, so that an id a page kept from an earlier boot of the
        // sandbox does not name another page's shell.
        let id = loop {
            let id: u32 = rand::random();
            if id != 0 && !open.contains_key(&id) {
                break id;
            }
        };
        let (stdin_tx, stdin_rx) = tokio::io::duplex(STDIN_BYTES);
        let (stdout_tx, stdout_rx) = tokio::io::duplex(STDIN_BYTES);
        let (stderr_tx, stderr_rx) = tokio::io::duplex(STDIN_BYTES);
        let (controls_tx, controls) = mpsc::channel(8);
        let term = Arc::new(Term {
            stdin: tokio::sync::Mutex::new(stdin_tx),
            controls: controls_tx,
            screen: Mutex::new(Screen {
                scrollback: VecDeque::new(),
                live: broadcast::channel(LIVE_CHUNKS).0,
                ended: None,
            }),
            command: Mutex::new(None),
        });
        let io = ExecIo {
            stdin: Some(Box::new(stdin_rx)),
            stdout: Box::new(stdout_tx),
            stderr: Box::new(stderr_tx),
            controls,
        };
        let command = tokio::spawn(run(spec, io));
        *term.command.lock().unwrap_or_else(|e| e.into_inner()) = Some(command.abort_handle());
        let pumps = [
            tokio::spawn(pump(term.clone(), stdout_rx)),
            tokio::spawn(pump(term.clone(), stderr_rx)),
        ];
        let this = self.open.clone();
        tokio::spawn({
            let term = term.clone();
            async move {
                let last = command.await.unwrap_or_else(|_| ServerMsg::Error {
                    message: "hung up; the command ignored SIGHUP and was cut off".to_owned(),
                });
                // Its output ends with it: show all of it before the end.
                for pump in pumps {
                    let _ = pump.await;
                }
                this.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                let mut screen = term.screen.lock().unwrap_or_else(|e| e.into_inner());
                screen.ended = Some(last.clone());
                let _ = screen.live.send(Event::Ended(last));
            }
        });
        open.insert(id, term);
        Ok(id)
    }

    /// Serves one client of terminal `id` on `socket` until it leaves or
    /// the command ends.
    pub async fn attach(&self, id: u32, socket: WebSocket) {
        let found = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        let Some(term) = found else {
            return bridge::refuse(socket, TerminalError::Gone(id).to_string()).await;
        };
        // Taken together under the lock the pumps append under: nothing
        // is shown twice or missed between the two.
        let (seen, ended, mut live) = {
            let screen = term.screen.lock().unwrap_or_else(|e| e.into_inner());
            let seen: Vec<u8> = screen.scrollback.iter().copied().collect();
            (seen, screen.ended.clone(), screen.live.subscribe())
        };
        let (mut sink, stream) = socket.split();
        let hello = ServerMsg::Attached { id };
        if send_text(&mut sink, &hello).await.is_err()
            || (!seen.is_empty() && sink.send(output(&seen)).await.is_err())
        {
            return;
        }
        drop(seen);
        // It ended between the lookup and the subscription.
        if let Some(last) = ended {
            let _ = send_text(&mut sink, &last).await;
            let _ = sink.close().await;
            return;
        }
        let mut inputs = tokio::spawn(read_inputs(stream, term.clone()));
        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                // The client left: detach now, not at the next output.
                _ = &mut inputs => break,
            };
            let message = match received {
                Ok(Event::Output(chunk)) => Message::Binary(chunk),
                Ok(Event::Ended(last)) => {
                    let _ = send_text(&mut sink, &last).await;
                    break;
                }
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    let note = format!(
                        "\r\n[capsem: {skipped} pieces of output skipped: this client read too slowly]\r\n"
                    );
                    output(note.as_bytes())
                }
                Err(broadcast::error::RecvError::Closed) => break,
            };
            if sink.send(message).await.is_err() {
                break;
            }
        }
        inputs.abort();
        let _ = sink.close().await;
    }
}

/// The command's output into the scrollback and to attached clients.
async fn pump(term: Arc<Term>, mut from: impl AsyncRead + Unpin) {
    let mut buf = vec![0u8; 32 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        let mut screen = term.screen.lock().unwrap_or_else(|e| e.into_inner());
        screen.scrollback.extend(&buf[..n]);
        let over = screen.scrollback.len().saturating_sub(SCROLLBACK_BYTES);
        screen.scrollback.drain(..over);
        // Nobody attached is no error: the scrollback has it.
        let _ = screen.live.send(Event::Output(tagged(&buf[..n])));
    }
}

/// A client's keys, resizes and signals into the command; it leaving
/// only detaches it.
async fn read_inputs(mut stream: futures::stream::SplitStream<WebSocket>, term: Arc<Term>) {
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Binary(data) => {
                if term.stdin.lock().await.write_all(&data).await.is_err() {
                    return;
                }
            }
            Message::Text(text) => match serde_json::from_str::<ClientMsg>(&text) {
                Ok(message) => {
                    if let Some(control) = bridge::control_of(message) {
                        let _ = term.controls.send(control).await;
                    }
                    if message == (ClientMsg::Signal { signal: SIGHUP }) {
                        tokio::spawn(cut_off_later(term.clone()));
                    }
                }
                Err(e) => tracing::warn!("a terminal client sent a bad message: {e}"),
            },
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

/// Cuts a hung-up command off if it is still running after the grace.
async fn cut_off_later(term: Arc<Term>) {
    tokio::time::sleep(HANGUP_GRACE).await;
    if let Some(command) = term
        .command
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        command.abort();
    }
}

/// Output as the exec protocol sends it: tagged as stdout (a terminal's
/// output is all one stream).
fn tagged(bytes: &[u8]) -> Bytes {
    let mut tagged = Vec::with_capacity(bytes.len() + 1);
    tagged.push(STDOUT);
    tagged.extend_from_slice(bytes);
    tagged.into()
}

fn output(bytes: &[u8]) -> Message {
    Message::Binary(tagged(bytes))
}

async fn send_text(
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    message: &ServerMsg,
) -> Result<(), axum::Error> {
    let text = serde_json::to_string(message).unwrap_or_default();
    sink.send(Message::Text(text.into())).await
}
