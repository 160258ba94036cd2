//! Just enough of QEMU's machine protocol (QMP) to snapshot a VM (write
//! its RAM and device state to a descriptor capsem passes) and to see one
//! resumed from a snapshot run.
//!
//! QMP is line-delimited JSON on the socket pair QEMU inherits
//! ([`super::args::Fd::Control`]). QEMU's `fd:` migration target only
//! takes a descriptor named with `getfd`, which arrives with the command
//! as `SCM_RIGHTS`.

use std::fs::File;
use std::io::{BufRead, BufReader, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde_json::{Value, json};

/// Longest reply line read; QMP's replies here are a few hundred bytes.
const MAX_LINE_BYTES: u64 = 64 * 1024;
/// Longest QEMU's monitor may take to answer one command.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a running migration is polled.
const POLL: Duration = Duration::from_millis(5);

/// A QMP conversation failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket failed or closed.
    #[error("talking to QEMU's monitor: {0}")]
    Io(#[from] std::io::Error),
    /// QEMU said something that is not QMP.
    #[error("QEMU's monitor sent {0:?}")]
    Malformed(String),
    /// A command was refused.
    #[error("QEMU refused `{command}`: {desc}")]
    Refused {
        /// The command.
        command: String,
        /// QEMU's reason.
        desc: String,
    },
    /// The snapshot or resume did not complete in time.
    #[error("QEMU did not finish within {0:?}")]
    TimedOut(Duration),
}

/// A QMP session in command mode.
pub struct Qmp {
    socket: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    /// Reads QEMU's greeting on `socket` and leaves capabilities
    /// negotiation. Every read is bounded by `timeout`.
    pub fn connect(socket: UnixStream, timeout: Duration) -> Result<Self, QmpError> {
        socket.set_read_timeout(Some(timeout))?;
        let mut qmp = Qmp {
            reader: BufReader::new(socket.try_clone()?),
            socket,
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Malformed(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", json!({}), None)?;
        Ok(qmp)
    }

    /// Writes the VM's whole state (RAM included) to `state`, within
    /// `limit`; the VM is paused once it is written. It is not paused
    /// first: the snapshot records the run state, and one taken paused
    /// would resume paused.
    pub fn save(&mut self, state: &File, limit: Duration) -> Result<(), QmpError> {
        self.execute("getfd", json!({"fdname": "snapshot"}), Some(state))?;
        self.execute("migrate", json!({"uri": "fd:snapshot"}), None)?;
        self.poll("query-migrate", limit, |info| {
            match info.get("status").and_then(Value::as_str) {
                Some("completed") => Some(Ok(())),
                Some("failed" | "cancelled") => Some(Err(QmpError::Refused {
                    command: "migrate".into(),
                    desc: info
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("failed")
                        .to_owned(),
                })),
                _ => None,
            }
        })
    }

    /// Waits until a VM resuming a snapshot (`-incoming`) runs, within
    /// `limit`. A snapshot QEMU cannot load ends QEMU, and this with it.
    pub fn wait_running(&mut self, limit: Duration) -> Result<(), QmpError> {
        self.poll("query-status", limit, |info| {
            match info.get("status").and_then(Value::as_str) {
                Some("running") => Some(Ok(())),
                Some("inmigrate" | "prelaunch") => None,
                other => Some(Err(QmpError::Refused {
                    command: "the resume".into(),
                    desc: format!("the VM is {}", other.unwrap_or("in no known state")),
                })),
            }
        })
    }

    /// Runs `command` until `done` says how it ended, within `limit`.
    fn poll(
        &mut self,
        command: &str,
        limit: Duration,
        done: impl Fn(&Value) -> Option<Result<(), QmpError>>,
    ) -> Result<(), QmpError> {
        let deadline = Instant::now() + limit;
        loop {
            let info = self.execute(command, json!({}), None)?;
            match done(&info) {
                Some(ended) => return ended,
                None if Instant::now() > deadline => return Err(QmpError::TimedOut(limit)),
                None => std::thread::sleep(POLL),
            }
        }
    }

    /// Sends `command` (with `fd` attached) and returns its `return`
    /// value, skipping the events QEMU interleaves.
    fn execute(
        &mut self,
        command: &str,
        arguments: Value,
        fd: Option<&File>,
    ) -> Result<Value, QmpError> {
        let mut line = json!({"execute": command, "arguments": arguments}).to_string();
        line.push('\n');
        match fd {
            Some(fd) => {
                let fds = [fd.as_raw_fd()];
                let sent = sendmsg::<()>(
                    self.socket.as_raw_fd(),
                    &[IoSlice::new(line.as_bytes())],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::empty(),
                    None,
                )
                .map_err(std::io::Error::from)?;
                if sent != line.len() {
                    return Err(QmpError::Io(std::io::Error::other("short QMP write")));
                }
            }
            None => self.socket.write_all(line.as_bytes())?,
        }
        loop {
            let reply = self.read()?;
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = reply.get("error") {
                return Err(QmpError::Refused {
                    command: command.to_owned(),
                    desc: error
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                        .to_owned(),
                });
            }
            if reply.get("event").is_none() {
                return Err(QmpError::Malformed(reply.to_string()));
            }
        }
    }

    /// Reads one JSON line, at most [`MAX_LINE_BYTES`] long.
    fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE_BYTES)
            .read_line(&mut line)?;
        if n == 0 {
            return Err(QmpError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if !line.ends_with('\n') {
            return Err(QmpError::Malformed(format!(
                "a line over {MAX_LINE_BYTES} bytes"
            )));
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Malformed(line.trim_end().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake QEMU: answers each command with `reply(command)` and records
    /// whether a descriptor came with it.
    fn fake(
        reply: impl Fn(&str) -> String + Send + 'static,
    ) -> (UnixStream, std::thread::JoinHandle<Vec<(String, bool)>>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut theirs = theirs;
            theirs
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut seen = Vec::new();
            loop {
                let mut buf = vec![0u8; 4096];
                let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let msg = match nix::sys::socket::recvmsg::<()>(
                    theirs.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::empty(),
                ) {
                    Ok(msg) if msg.bytes > 0 => msg,
                    _ => return seen,
                };
                let with_fd = msg.cmsgs().unwrap().next().is_some();
                let n = msg.bytes;
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                for line in text.lines() {
                    let cmd: Value = serde_json::from_str(line).unwrap();
                    let name = cmd["execute"].as_str().unwrap().to_owned();
                    theirs.write_all(reply(&name).as_bytes()).unwrap();
                    seen.push((name, with_fd));
                }
            }
        });
        (ours, server)
    }

    #[test]
    fn a_snapshot_passes_the_descriptor_and_waits_for_completion() {
        let polls = std::sync::atomic::AtomicU32::new(0);
        let (socket, server) = fake(move |cmd| match cmd {
            "query-migrate" if polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 => {
                "{\"event\": \"MIGRATION\"}\n{\"return\": {\"status\": \"active\"}}\n".into()
            }
            "query-migrate" => "{\"return\": {\"status\": \"completed\"}}\n".into(),
            _ => "{\"return\": {}}\n".into(),
        });
        let state = tempfile::tempfile().unwrap();
        let mut qmp = Qmp::connect(socket, Duration::from_secs(5)).unwrap();
        qmp.save(&state, Duration::from_secs(5)).unwrap();
        drop(qmp);
        let seen = server.join().unwrap();
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "qmp_capabilities",
                "getfd",
                "migrate",
                "query-migrate",
                "query-migrate",
                "query-migrate"
            ]
        );
        assert!(seen.iter().all(|(n, fd)| *fd == (n == "getfd")), "{seen:?}");
    }

    #[test]
    fn a_failed_migration_and_a_refusal_are_errors_with_qemus_words() {
        let (socket, _server) = fake(|cmd| match cmd {
            "query-migrate" => {
                "{\"return\": {\"status\": \"failed\", \"error-desc\": \"disk full\"}}\n".into()
            }
            _ => "{\"return\": {}}\n".into(),
        });
        let state = tempfile::tempfile().unwrap();
        let mut qmp = Qmp::connect(socket, Duration::from_secs(5)).unwrap();
        let err = qmp.save(&state, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");

        let (socket, _server) = fake(|cmd| match cmd {
            "getfd" => "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\n".into(),
            _ => "{\"return\": {}}\n".into(),
        });
        let mut qmp = Qmp::connect(socket, Duration::from_secs(5)).unwrap();
        let err = qmp.save(&state, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.to_string(), "QEMU refused `getfd`: no");
    }

    #[test]
    fn a_resume_is_waited_for_and_a_vm_left_paused_is_an_error() {
        let polls = std::sync::atomic::AtomicU32::new(0);
        let (socket, _server) =
            fake(
                move |_| match polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                    0 => "{\"return\": {}}\n".into(),
                    1 | 2 => "{\"return\": {\"status\": \"inmigrate\"}}\n".into(),
                    _ => "{\"return\": {\"status\": \"running\"}}\n".into(),
                },
            );
        let mut qmp = Qmp::connect(socket, Duration::from_secs(5)).unwrap();
        qmp.wait_running(Duration::from_secs(5)).unwrap();

        let (socket, _server) = fake(|cmd| match cmd {
            "query-status" => "{\"return\": {\"status\": \"paused\"}}\n".into(),
            _ => "{\"return\": {}}\n".into(),
        });
        let mut qmp = Qmp::connect(socket, Duration::from_secs(5)).unwrap();
        let err = qmp.wait_running(Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("the VM is paused"), "{err}");
    }

    #[test]
    fn garbage_and_endless_lines_are_refused() {
        for junk in [&b"not json\n"[..], &[b'x'; 70_000][..]] {
            let (ours, mut theirs) = UnixStream::pair().unwrap();
            theirs.write_all(junk).unwrap();
            drop(theirs);
            let err = Qmp::connect(ours, Duration::from_secs(5)).err().unwrap();
            assert!(matches!(err, QmpError::Malformed(_)), "{err}");
        }
        let (ours, theirs) = UnixStream::pair().unwrap();
        let err = Qmp::connect(ours, Duration::from_millis(50)).err().unwrap();
        assert!(matches!(err, QmpError::Io(_)), "{err}");
        drop(theirs);
    }
}
