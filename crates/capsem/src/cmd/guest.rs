//! Talking to a sandbox's guest through the service's exec WebSocket: what
//! `capsem mcp` and `capsem e2b` run in a sandbox to answer their clients.

use std::time::Duration;

use bytes::Bytes;
use capsem_proto::Command;
use capsem_service::api::{ClientMsg, ExecStart, STDERR, STDOUT, ServerMsg};
use capsem_service::client::Socket;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::cmd::sandbox::{encode, service};

/// The size of the pieces stdin is sent in.
const STDIN_PIECE: usize = 32 * 1024;

/// What goes to a command.
pub type Sink = SplitSink<Socket, Message>;
/// What comes from it.
pub type Source = SplitStream<Socket>;

/// One thing a command's stream carries.
pub enum Output {
    /// A piece of stdout (or of its terminal).
    Stdout(Bytes),
    /// A piece of stderr.
    Stderr(Bytes),
    /// Its end (or its refusal): the last message.
    End(ServerMsg),
}

/// Starts `start` in the sandbox `name`; its stdin and its output.
pub async fn open(name: &str, start: &ExecStart) -> Result<(Sink, Source), String> {
    let client = service().await.map_err(|e| e.to_string())?;
    let path = format!("/v1/sandboxes/{}/exec", encode(name));
    let socket = client.websocket(&path).await.map_err(|e| e.to_string())?;
    let (mut sink, source) = socket.split();
    let first = serde_json::to_string(start).map_err(|e| e.to_string())?;
    sink.send(Message::Text(first.into()))
        .await
        .map_err(|e| format!("the sandbox's stream failed: {e}"))?;
    Ok((sink, source))
}

/// The next thing from `source`; `None` when it ends without an exit status.
pub async fn next(source: &mut Source) -> Result<Option<Output>, String> {
    while let Some(msg) = source.next().await {
        match msg.map_err(|e| format!("the sandbox's stream failed: {e}"))? {
            Message::Binary(data) => match data.first() {
                Some(&STDOUT) => return Ok(Some(Output::Stdout(data.slice(1..)))),
                Some(&STDERR) => return Ok(Some(Output::Stderr(data.slice(1..)))),
                _ => {}
            },
            Message::Text(text) => {
                let end = serde_json::from_str(&text)
                    .map_err(|e| format!("a bad message from the sandbox: {e}"))?;
                return Ok(Some(Output::End(end)));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// A control message for the command.
pub fn control(msg: ClientMsg) -> Message {
    Message::Text(serde_json::to_string(&msg).unwrap_or_default().into())
}

/// Sends `data` as stdin, in pieces.
pub async fn feed(sink: &mut Sink, data: &[u8]) -> Result<(), String> {
    for piece in data.chunks(STDIN_PIECE) {
        sink.send(Message::Binary(Bytes::copy_from_slice(piece)))
            .await
            .map_err(|e| format!("the sandbox's stream failed: {e}"))?;
    }
    Ok(())
}

/// Runs `command` in the sandbox `name` with `stdin`; its last message and
/// its stdout and stderr, kept to `caps` bytes each.
pub async fn run(
    name: &str,
    command: Command,
    stdin: &[u8],
    timeout: Duration,
    caps: (usize, usize),
) -> Result<(ServerMsg, Captured, Captured), String> {
    let start = ExecStart {
        command,
        env: Vec::new(),
        tty: None,
        timeout_ms: Some(timeout.as_millis().try_into().unwrap_or(u64::MAX)),
    };
    let (mut sink, mut source) = open(name, &start).await?;
    // Stdin goes while output comes: a command that writes before it
    // reads would otherwise wait on a reader that waits on it.
    let send = async move {
        if feed(&mut sink, stdin).await.is_ok() {
            let _ = sink.send(control(ClientMsg::StdinEof)).await;
        }
        std::future::pending::<std::convert::Infallible>().await
    };
    let receive = async {
        let (mut out, mut err) = (Captured::new(caps.0), Captured::new(caps.1));
        loop {
            match next(&mut source).await? {
                Some(Output::Stdout(data)) => out.push(&data),
                Some(Output::Stderr(data)) => err.push(&data),
                Some(Output::End(end)) => return Ok((end, out, err)),
                None => {
                    return Err(
                        "the sandbox ended the command's stream without its exit status".into(),
                    );
                }
            }
        }
    };
    tokio::select! {
        ended = receive => ended,
        never = send => match never {},
    }
}

/// The first bytes of a stream and its length.
pub struct Captured {
    pub data: Vec<u8>,
    pub total: u64,
    cap: usize,
}

impl Captured {
    /// Keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Captured {
            data: Vec::new(),
            total: 0,
            cap,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.cap.saturating_sub(self.data.len());
        self.data.extend_from_slice(&data[..room.min(data.len())]);
    }

    /// The text, with a note when cut.
    pub fn text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.data).into_owned();
        if self.total > self.data.len() as u64 {
            text.push_str(&format!(
                "\n[capsem: cut at {} KiB of {} bytes]",
                self.cap >> 10,
                self.total
            ));
        }
        text
    }
}

/// A path in the guest, taken as it reads: absolute, without `..`.
pub fn guest_path(path: &str) -> Result<&str, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "{path}: give an absolute path in the sandbox, such as /root/{path}"
        ));
    }
    if path.split('/').any(|c| c == "..") || path.contains('\0') || path.len() > 4096 {
        return Err(format!(
            "{path}: a path with '..', a NUL byte or over 4096 bytes is refused; give the plain absolute path"
        ));
    }
    Ok(path)
}

/// A script's first words: exit 2, saying so, when `$1` does not exist.
pub const MUST_EXIST: &str = "test -e \"$1\" || test -L \"$1\" || \
     { printf '%s: no such file or directory\\n' \"$1\" >&2; exit 2; }; ";

/// Lists `$1` (to depth `$3`, from depth `$2`: 0 0 is the path itself),
/// nine NUL-ended fields an entry; exit 20 when a listing is asked of
/// what is not a directory. `$4` is `-P` for the path itself (a symlink
/// is stated as one) or `-H` for a listing (a symlink to a directory
/// lists the directory).
const LIST_SCRIPT: &str = "[ \"$2\" = 0 ] || test -d \"$1\" || { printf '%s: not a directory\\n' \"$1\" >&2; exit 20; }; \
     exec find \"$4\" \"$1\" -mindepth \"$2\" -maxdepth \"$3\" -printf '%y\\0%s\\0%m\\0%T@\\0%u\\0%g\\0%l\\0%p\\0%f\\0'";

/// The command that lists `path` from depth `min` to `max`.
pub fn listing(path: &str, min: u32, max: u32) -> Command {
    let script = format!("{MUST_EXIST}{LIST_SCRIPT}");
    let mut argv: Vec<String> = vec!["sh".into(), "-c".into(), script, "sh".into(), path.into()];
    let follow = if min == 0 { "-P" } else { "-H" };
    argv.extend([min.to_string(), max.to_string(), follow.to_owned()]);
    Command::Argv(argv)
}

/// An entry of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    /// `find`'s `%y`: f, d, l, or another letter.
    pub kind: char,
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Last modified, seconds since the Unix epoch.
    pub modified: f64,
    pub owner: String,
    pub group: String,
    /// A symlink's target; empty otherwise.
    pub target: String,
    pub path: String,
    pub name: String,
}

/// The entries of a [`listing`]'s output, sorted by path; a malformed one
/// is skipped (the guest writes this). Fields are read nine at a time and
/// made strings only for an entry that parses, so a forged listing costs
/// no more than its size.
pub fn entries(listing: &[u8]) -> Vec<Stat> {
    let mut fields = listing.split(|&b| b == 0);
    let mut record: Vec<&[u8]> = Vec::with_capacity(9);
    let mut all = Vec::new();
    loop {
        record.clear();
        record.extend(fields.by_ref().take(9));
        let [kind, size, mode, modified, owner, group, target, path, name] = record[..] else {
            break;
        };
        let text = |f: &[u8]| String::from_utf8_lossy(f).into_owned();
        let number = |f: &[u8]| std::str::from_utf8(f).ok().map(str::to_owned);
        let parsed = (|| {
            let [letter] = kind else { return None };
            Some(Stat {
                kind: char::from(*letter),
                size: number(size)?.parse().ok()?,
                mode: u32::from_str_radix(&number(mode)?, 8).ok()?,
                modified: number(modified)?
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite())?,
                owner: text(owner),
                group: text(group),
                target: text(target),
                path: text(path),
                name: text(name),
            })
        })();
        all.extend(parsed);
    }
    all.sort_by(|a, b| a.path.cmp(&b.path));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_are_absolute_and_plain() {
        assert_eq!(guest_path("/root/a.txt"), Ok("/root/a.txt"));
        assert!(guest_path("notes").unwrap_err().contains("/root/notes"));
        for bad in ["/root/../etc/shadow", "/..", "/a\0b"] {
            assert!(guest_path(bad).unwrap_err().contains("refused"), "{bad}");
        }
        assert!(guest_path(&format!("/{}", "a".repeat(4096))).is_err());
    }

    #[test]
    fn a_forged_listing_yields_what_parses() {
        let listing =
            b"f\x0012\x00644\x001700000000.5\x00root\x00root\x00\x00/r/b.txt\x00b.txt\x00\
            d\x004096\x00755\x001700000000\x00root\x00root\x00\x00/r/a dir\x00a dir\x00\
            f\x00x\x00644\x001\x00u\x00g\x00\x00/r/bad\x00bad\x00\
            ff\x001\x00644\x00NaN\x00u\x00g\x00\x00/r/bad2\x00bad2\x00";
        let got = entries(listing);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].name, "a dir");
        assert_eq!(got[0].kind, 'd');
        assert_eq!(got[1].size, 12);
        assert_eq!(got[1].mode, 0o644);
        assert_eq!(got[1].modified, 1_700_000_000.5);
        assert!(entries(b"f\x00truncated").is_empty());
    }

    #[test]
    fn output_is_cut_with_its_size() {
        let mut kept = Captured::new(4);
        kept.push(b"abc");
        kept.push(b"defg");
        assert_eq!(kept.total, 7);
        assert_eq!(kept.text(), "abcd\n[capsem: cut at 0 KiB of 7 bytes]");
        let mut whole = Captured::new(4);
        whole.push(b"ok");
        assert_eq!(whole.text(), "ok");
    }
}
