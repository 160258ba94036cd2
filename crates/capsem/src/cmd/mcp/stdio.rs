//! `capsem mcp`'s stdio: rmcp's line transport, behind a reader that keeps
//! each message to [`MAX_MESSAGE`]. rmcp drops a longer line without an
//! answer, which leaves the client waiting forever; here the request is
//! answered with an error that says how large it was, and its bytes are
//! skimmed for the request's id without being kept.

use std::io::{BufRead, Read, Write};

use rmcp::RoleServer;
use rmcp::model::{
    CallToolResult, ContentBlock, ErrorData, RequestId, ServerJsonRpcMessage, ServerResult,
};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::transport::async_rw::AsyncRwTransport;
use serde::Deserialize;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

/// The largest message taken, as rmcp's own default.
pub const MAX_MESSAGE: usize = rmcp::transport::async_rw::DEFAULT_MAX_LINE_LENGTH;

/// A message longer than [`MAX_MESSAGE`], read and thrown away.
#[derive(Debug)]
struct Oversized {
    /// What of it parsed: its id and method.
    head: Option<Head>,
    /// Its length.
    bytes: u64,
}

/// The part of a JSON-RPC message an answer needs.
#[derive(Debug, Deserialize)]
struct Head {
    id: Option<RequestId>,
    #[serde(default)]
    method: String,
}

impl Oversized {
    /// The answer: a tool error for a tool call, a JSON-RPC error for any
    /// other request, nothing for a notification.
    fn answer(&self) -> Option<ServerJsonRpcMessage> {
        let head = self.head.as_ref()?;
        let id = head.id.clone()?;
        let message = format!(
            "this request is {} MiB; capsem mcp takes at most {} MiB in one message \
             (copy large files with `capsem cp`)",
            self.bytes.div_ceil(1 << 20),
            MAX_MESSAGE >> 20
        );
        Some(if head.method == "tools/call" {
            let result = CallToolResult::error(vec![ContentBlock::text(message)]);
            ServerJsonRpcMessage::response(ServerResult::CallToolResult(result), id)
        } else {
            ServerJsonRpcMessage::error(ErrorData::invalid_request(message, None), Some(id))
        })
    }
}

/// stdin and stdout as an MCP transport.
pub struct Stdio {
    inner: AsyncRwTransport<RoleServer, pipe::Receiver, tokio::io::Stdout>,
    oversized: mpsc::Receiver<Oversized>,
}

impl Stdio {
    /// Starts the thread that reads stdin.
    pub fn new() -> std::io::Result<Stdio> {
        let (read, write) = std::io::pipe()?;
        let read = pipe::Receiver::from_owned_fd(read.into())?;
        let (tx, oversized) = mpsc::channel(4);
        std::thread::spawn(move || {
            let stdin = std::io::stdin().lock();
            if let Err(e) = filter(stdin, write, &tx) {
                tracing::debug!("reading stdin: {e}");
            }
        });
        Ok(Stdio {
            inner: AsyncRwTransport::new(read, tokio::io::stdout()),
            oversized,
        })
    }
}

/// Copies `input`'s lines to `out`, all but those longer than
/// [`MAX_MESSAGE`], which go to `oversized` instead.
fn filter(
    input: impl Read,
    mut out: impl Write,
    oversized: &mpsc::Sender<Oversized>,
) -> std::io::Result<()> {
    let mut input = std::io::BufReader::with_capacity(64 * 1024, input);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut input)
            .take(MAX_MESSAGE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.len() <= MAX_MESSAGE || line.ends_with(b"\n") {
            out.write_all(&line)?;
            continue;
        }
        let mut rest = RestOfLine {
            input: &mut input,
            bytes: line.len() as u64,
            done: false,
        };
        let head = serde_json::from_reader(std::io::Cursor::new(&line).chain(&mut rest)).ok();
        std::io::copy(&mut rest, &mut std::io::sink())?;
        let bytes = rest.bytes;
        if oversized.blocking_send(Oversized { head, bytes }).is_err() {
            return Ok(());
        }
    }
}

/// What remains of the current line, its newline consumed but not given.
struct RestOfLine<'a, R> {
    input: &'a mut R,
    bytes: u64,
    done: bool,
}

impl<R: BufRead> Read for RestOfLine<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let available = self.input.fill_buf()?;
        if available.is_empty() {
            self.done = true;
            return Ok(0);
        }
        // serde_json reads a byte at a time: look no further than asked.
        let take = available.len().min(buf.len());
        let end = available[..take].iter().position(|&b| b == b'\n');
        let n = end.unwrap_or(take);
        buf[..n].copy_from_slice(&available[..n]);
        let newline = end == Some(n);
        self.input.consume(n + usize::from(newline));
        self.done = newline;
        self.bytes += n as u64;
        Ok(n)
    }
}

impl Transport<RoleServer> for Stdio {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            let answer = tokio::select! {
                Some(big) = self.oversized.recv() => big.answer(),
                msg = self.inner.receive() => return msg,
            };
            if let Some(answer) = answer {
                tracing::warn!("refused a request over {} MiB", MAX_MESSAGE >> 20);
                if self.inner.send(answer).await.is_err() {
                    return None;
                }
            }
        }
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filtered(input: &[u8]) -> (Vec<u8>, Vec<Oversized>) {
        let (tx, mut rx) = mpsc::channel(16);
        let mut out = Vec::new();
        filter(input, &mut out, &tx).unwrap();
        drop(tx);
        let mut big = Vec::new();
        while let Ok(o) = rx.try_recv() {
            big.push(o);
        }
        (out, big)
    }

    #[test]
    fn an_oversized_line_is_skimmed_for_its_id_and_the_next_passes() {
        let pad = "x".repeat(MAX_MESSAGE + 10);
        // The id after the padding, as some clients write it.
        let input = format!(
            "{{\"jsonrpc\":\"2.0\",\"method\":\"tools/call\",\"params\":{{\"arguments\":{{\"content\":\"{pad}\"}}}},\"id\":7}}\n{{\"small\":1}}\n"
        );
        let (out, big) = filtered(input.as_bytes());
        assert_eq!(out, b"{\"small\":1}\n");
        assert_eq!(big.len(), 1);
        let head = big[0].head.as_ref().unwrap();
        assert_eq!(head.id, Some(RequestId::Number(7)));
        assert_eq!(big[0].bytes as usize, input.find('\n').unwrap());
        let answer = serde_json::to_value(big[0].answer().unwrap()).unwrap();
        assert_eq!(answer["id"], 7);
        assert_eq!(answer["result"]["isError"], true);
        let text = answer["result"]["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("at most 16 MiB"), "{text}");
    }

    #[test]
    fn junk_too_long_is_dropped_without_an_answer() {
        let mut input = vec![b'{'; MAX_MESSAGE + 1];
        input.extend_from_slice(b"\n{}\n");
        let (out, big) = filtered(&input);
        assert_eq!(out, b"{}\n");
        assert!(big[0].answer().is_none());
        // A last line with no newline still passes.
        assert_eq!(filtered(b"{\"a\":1}").0, b"{\"a\":1}");
    }
}
