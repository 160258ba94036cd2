//! Typed messages. The two directions are separate types so that the host
//! only ever decodes [`GuestToHost`] and the guest only [`HostToGuest`].
//!
//! A channel starts with a handshake ([`GuestHello`], [`HostHello`], then
//! [`GuestReady`]). A VM restored from a boot template was snapshotted
//! waiting for the [`HostHello`]: its hello went to the template's builder,
//! so on a restored VM the host sends its hello first.
//! After it the host opens streams of two kinds, told apart by their first
//! message:
//!
//! - an **exec stream** starts with [`HostToGuest::Exec`], then carries that
//!   command's stdin; the guest answers with output chunks and ends with
//!   [`GuestToHost::Exited`];
//! - the **control stream** carries [`HostToGuest::Signal`],
//!   [`HostToGuest::Resize`], [`HostToGuest::SetClock`] and
//!   [`HostToGuest::Shutdown`], so they never queue behind stdin data that
//!   a command is not reading.

use crate::workspace::{FsReply, FsRequest, WorkspaceMount};
use serde::{Deserialize, Serialize};

use crate::limits::{
    MAX_ARGS, MAX_CHUNK_BYTES, MAX_ENV_VARS, MAX_FILES, MAX_FILES_BYTES, MAX_SIGNAL,
    MAX_TEXT_BYTES, MAX_TTY_CELLS, PROTOCOL_VERSION,
};

/// First frame on a fresh channel, sent by the guest agent once it is ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestHello {
    /// The guest's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The agent's crate version, for diagnostics.
    pub agent_version: String,
    /// Guest `CLOCK_BOOTTIME` when the agent started, in nanoseconds: how long
    /// the kernel took to reach `/init`.
    pub init_started_ns: u64,
    /// Guest `CLOCK_BOOTTIME` when this hello was sent, in nanoseconds.
    pub ready_ns: u64,
}

/// The host's answer to [`GuestHello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostHello {
    /// The host's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Host wall clock, nanoseconds since the Unix epoch. The guest has no
    /// reliable clock of its own under TCG, so it sets its clock from this.
    pub unix_time_ns: u64,
    /// The PEM certificate of the CA the host's proxy signs intercepted
    /// connections with; the guest adds it to its trust store.
    pub ca_pem: String,
    /// Fresh random bytes from the host. The guest mixes them into its
    /// kernel's pool and reseeds its CRNG before anything else runs: VMs
    /// restored from one template would otherwise share its RNG state.
    pub entropy: [u8; 32],
    /// `/root` is the sandbox's own disk (serial `capsem-home`), which the
    /// guest mounts before it confirms; otherwise it stays a fresh tmpfs.
    /// Told here rather than on the kernel command line so that a named
    /// sandbox can resume a boot template too.
    pub home_disk: bool,
}

impl HostHello {
    /// A hello for this build of the protocol.
    pub fn new(unix_time_ns: u64, ca_pem: String, entropy: [u8; 32], home_disk: bool) -> Self {
        HostHello {
            protocol: PROTOCOL_VERSION,
            unix_time_ns,
            ca_pem,
            entropy,
            home_disk,
        }
    }
}

/// The guest's answer to [`HostHello`]: reseeded, clock set, CA trusted,
/// home mounted, and about to serve streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestReady {
    /// Guest `CLOCK_BOOTTIME` when this was sent, in nanoseconds.
    pub ready_ns: u64,
}

/// What the guest should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// One command line, run by `bash -c`.
    Shell(String),
    /// An exact argument vector; the first element is looked up in `PATH`.
    Argv(Vec<String>),
}

impl std::fmt::Display for Command {
    /// The command as a user would type it: a shell line as is, an argv
    /// with the words that need it single-quoted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Shell(line) => f.write_str(line),
            Command::Argv(argv) => {
                for (i, word) in argv.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    let plain = !word.is_empty()
                        && word
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
                    if plain {
                        f.write_str(word)?;
                    } else {
                        write!(f, "'{}'", word.replace('\'', "'\\''"))?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// A terminal for a command: its size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Start a command on this stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The host's id for this command, used to address signals to it.
    pub id: u32,
    /// The command.
    pub command: Command,
    /// Variables added to (or replacing) the guest's default environment.
    pub env: Vec<(String, String)>,
    /// Run it on a new pseudo-terminal of this size, as the controlling
    /// terminal of a new session: stdout and stderr merge into its output,
    /// and stdin is what is typed into it.
    pub tty: Option<TtySize>,
}

/// A file for the guest to write before the command starts, such as an AI
/// CLI's default configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFile {
    /// Absolute path, under one of [`FILE_ROOTS`].
    pub path: String,
    /// Permission bits (no setuid, setgid or sticky bit).
    pub mode: u32,
    /// The content.
    #[serde(with = "serde_bytes")]
    pub contents: Vec<u8>,
}

/// Where guest files may go: the writable scratch space, never the system.
pub const FILE_ROOTS: &[&str] = &["/root/", "/tmp/", "/run/"];

impl GuestFile {
    /// Checks one file: an absolute, normalized path under [`FILE_ROOTS`]
    /// (no `.`, `..` or empty components), plain permission bits.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let bad = |why: &'static str| ProtocolError::BadFile {
            path: self.path.chars().take(200).collect(),
            why,
        };
        check_no_nul("a file path", &self.path)?;
        check_text(&self.path)?;
        if !FILE_ROOTS.iter().any(|root| self.path.starts_with(root)) {
            return Err(bad("it is not under /root, /tmp or /run"));
        }
        let normal = self.path[1..]
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
        if !normal {
            return Err(bad("it is not a normalized absolute path"));
        }
        if self.mode & !0o777 != 0 {
            return Err(bad("its mode has bits beyond 0o777"));
        }
        Ok(())
    }
}

/// Checks a set of guest files: each file, their count and total size.
pub fn validate_files(files: &[GuestFile]) -> Result<(), ProtocolError> {
    check_count("files", files.len(), MAX_FILES)?;
    let total: usize = files.iter().map(|f| f.contents.len()).sum();
    if total > MAX_FILES_BYTES {
        return Err(ProtocolError::FilesTooLarge(total));
    }
    files.iter().try_for_each(GuestFile::validate)
}

/// The guest process behind a connection, as the agent found it in /proc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Its pid in the guest.
    pub pid: u32,
    /// Its command line, arguments joined by spaces.
    pub command: String,
}

/// A TCP connection a guest process opened, caught by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRequest {
    /// The IPv4 address the process connected to.
    pub addr: [u8; 4],
    /// The port.
    pub port: u16,
    /// Who connected, when the agent could tell.
    pub process: Option<ProcessInfo>,
}

/// Longest DNS name.
const MAX_NAME_BYTES: usize = 253;

/// Checks a DNS name the guest asked for: 1 to 253 bytes of labels of 1 to
/// 63 letters, digits, hyphens or underscores.
pub fn validate_name(name: &str) -> Result<(), ProtocolError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .strip_suffix('.')
            .unwrap_or(name)
            .split('.')
            .all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::BadName(name.chars().take(64).collect()))
    }
}

/// Host to guest, on an exec stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostToGuest {
    /// Start a command. Must be the first message of a stream, and only there.
    Exec(ExecRequest),
    /// Write these files, then answer [`GuestToHost::Done`]. The first and
    /// only message of a stream of its own, sent before any command.
    WriteFiles(Vec<GuestFile>),
    /// Bytes for the command's stdin.
    Stdin(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The host's stdin ended: close the command's stdin.
    StdinEof,
    /// The host stopped reading stdout (for example a closed pipe): close the
    /// command's stdout so it gets `SIGPIPE` like a local command would.
    StdoutClosed,
    /// Deliver a signal to the process group of the command `exec`. Sent on
    /// the control stream, so that it never waits behind stdin data.
    Signal {
        /// The [`ExecRequest::id`] of the command.
        exec: u32,
        /// The signal number.
        signal: u8,
    },
    /// The terminal of command `exec` changed size. Sent on the control
    /// stream.
    Resize {
        /// The [`ExecRequest::id`] of the command.
        exec: u32,
        /// The new size.
        size: TtySize,
    },
    /// Power the VM off now. Sent on the control stream.
    Shutdown,
    /// Set the wall clock (nanoseconds since the Unix epoch): the VM was
    /// suspended and has just resumed, its clock behind by the pause. Sent
    /// on the control stream.
    SetClock {
        /// The host's wall clock.
        unix_time_ns: u64,
    },
    /// The connection may go ahead; from here on the stream carries its
    /// bytes.
    Connected,
    /// The connection is refused; the agent resets it.
    Denied(String),
    /// The address of the name asked for (one per name: the host ties
    /// every connection to the name it was resolved from); none means the
    /// name does not exist.
    Resolved(Option<[u8; 4]>),
    /// First message of a stream of its own: a tar archive follows (as
    /// [`HostToGuest::Data`], then [`HostToGuest::DataEnd`]) whose entries
    /// all sit under one top name; it becomes `dest`, or `dest/name` when
    /// `dest` is a directory. Answered with [`GuestToHost::Done`].
    PutArchive(ArchiveTarget),
    /// First and only message of a stream of its own: send `path` as a tar
    /// archive under its own name ([`GuestToHost::Data`], then
    /// [`GuestToHost::Done`]).
    GetArchive {
        /// An absolute path in the guest.
        path: String,
    },
    /// A chunk of an archive.
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The archive is complete.
    DataEnd,
    /// First and only message of a stream of its own: mount the workspace
    /// (whose files the guest asks for with [`GuestToHost::Fs`]) at
    /// `/root/NAME`. Answered with [`GuestToHost::Done`].
    MountWorkspace(WorkspaceMount),
    /// First and only message of a stream of its own: send what the guest
    /// changed over the workspace as a tar archive
    /// ([`GuestToHost::Data`], then [`GuestToHost::Done`]): the files
    /// under [`CHANGES_FILES`](crate::workspace::CHANGES_FILES), deletions
    /// as OCI whiteouts.
    ExportWorkspace,
    /// The answer to a [`GuestToHost::Fs`] request.
    Fs(FsReply),
}

/// Where an archive from the host goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveTarget {
    /// An absolute path in the guest.
    pub dest: String,
    /// The archive's top name (one normal path component).
    pub name: String,
}

/// Checks a guest path of a copy: absolute, no NUL, bounded.
pub fn validate_copy_path(path: &str) -> Result<(), ProtocolError> {
    check_text(path)?;
    check_no_nul("a path", path)?;
    if !path.starts_with('/') {
        return Err(ProtocolError::BadPath(path.chars().take(200).collect()));
    }
    Ok(())
}

/// Checks an archive's top name: one path component, not `.` or `..`.
pub fn validate_top_name(name: &str) -> Result<(), ProtocolError> {
    check_text(name)?;
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(ProtocolError::BadPath(name.chars().take(200).collect()));
    }
    Ok(())
}

/// How a guest command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(u8),
    /// It was killed by this signal.
    Signal(u8),
}

impl ExitStatus {
    /// The shell convention: the code itself, or 128 + N for signal N.
    pub fn shell_code(self) -> u8 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(sig) => 128u8.saturating_add(sig),
        }
    }
}

/// Guest to host, on an exec stream. Untrusted: check with [`validate`](Self::validate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestToHost {
    /// Bytes the command wrote to stdout.
    Stdout(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Bytes the command wrote to stderr.
    Stderr(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The command ended; no message follows on this stream.
    Exited(ExitStatus),
    /// The agent refused the request (a bad request, not a failed command).
    Refused(String),
    /// The request of this stream (writing files, a copy) is done.
    Done,
    /// A chunk of an archive the host asked for.
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// First message of a stream the guest opens: a process connected out;
    /// may it? After [`HostToGuest::Connected`] the stream carries the
    /// connection's bytes, unframed.
    Connect(ConnectRequest),
    /// First and only message of a stream the guest opens: what addresses
    /// does this name have? Answered with [`HostToGuest::Resolved`].
    Resolve {
        /// The name asked for.
        name: String,
    },
    /// A request for the workspace's files, on a stream the guest opens
    /// for such requests; each is answered with [`HostToGuest::Fs`]
    /// before the next is sent.
    Fs(FsRequest),
    /// The guest's firewall dropped a packet that was not TCP or DNS. Sent
    /// on a stream of its own, one message per packet.
    Blocked {
        /// IP protocol name (udp, icmp, ...).
        protocol: String,
        /// Destination address.
        addr: [u8; 4],
        /// Destination port, when the protocol has one.
        port: u16,
    },
}

/// A message broke a rule of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The peer speaks another version.
    #[error("protocol version mismatch: this side speaks {ours}, the other {theirs}")]
    Version {
        /// Our version.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
    /// A data chunk is larger than [`MAX_CHUNK_BYTES`].
    #[error("data chunk of {0} bytes exceeds the limit of {MAX_CHUNK_BYTES}")]
    ChunkTooLarge(usize),
    /// A text field is larger than [`MAX_TEXT_BYTES`].
    #[error("text of {0} bytes exceeds the limit of {MAX_TEXT_BYTES}")]
    TextTooLarge(usize),
    /// Not a DNS name.
    #[error("'{0}' is not a valid DNS name")]
    BadName(String),
    /// A guest file that may not be written.
    #[error("refusing to write guest file {path}: {why}")]
    BadFile {
        /// The path (cut to 200 characters).
        path: String,
        /// Why not.
        why: &'static str,
    },
    /// Guest files larger together than [`MAX_FILES_BYTES`].
    #[error("guest files of {0} bytes exceed the limit of {MAX_FILES_BYTES}")]
    FilesTooLarge(usize),
    /// A terminal size beyond [`MAX_TTY_CELLS`].
    #[error("terminal size {0}x{1} is out of range")]
    BadSize(u16, u16),
    /// A signal number outside 1..=64.
    #[error("signal {0} is not a valid signal number")]
    BadSignal(u8),
    /// An exec request with no command.
    #[error("empty command")]
    EmptyCommand,
    /// Too many arguments or environment variables.
    #[error("too many {what}: {count} (limit {limit})")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// How many were sent.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A string contains a NUL byte, which cannot reach `execve`.
    #[error("{0} contains a NUL byte")]
    NulByte(&'static str),
    /// An environment variable that may not be set.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// A message that does not belong at this point of the stream.
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
    /// A copy's path that is not absolute, or a top name that is not one
    /// component.
    #[error("'{0}' is not a path a copy can take")]
    BadPath(String),
}

/// Checks that a peer's protocol version matches ours.
pub fn check_version(theirs: u32) -> Result<(), ProtocolError> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtocolError::Version {
            ours: PROTOCOL_VERSION,
            theirs,
        })
    }
}

fn check_signal(sig: u8) -> Result<(), ProtocolError> {
    if (1..=MAX_SIGNAL).contains(&sig) {
        Ok(())
    } else {
        Err(ProtocolError::BadSignal(sig))
    }
}

fn check_size(size: TtySize) -> Result<(), ProtocolError> {
    if size.rows > MAX_TTY_CELLS || size.cols > MAX_TTY_CELLS {
        return Err(ProtocolError::BadSize(size.rows, size.cols));
    }
    Ok(())
}

fn check_chunk(data: &[u8]) -> Result<(), ProtocolError> {
    if data.len() > MAX_CHUNK_BYTES {
        return Err(ProtocolError::ChunkTooLarge(data.len()));
    }
    Ok(())
}

fn check_text(text: &str) -> Result<(), ProtocolError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(ProtocolError::TextTooLarge(text.len()));
    }
    Ok(())
}

fn check_count(what: &'static str, count: usize, limit: usize) -> Result<(), ProtocolError> {
    if count > limit {
        return Err(ProtocolError::TooMany { what, count, limit });
    }
    Ok(())
}

fn check_no_nul(what: &'static str, s: &str) -> Result<(), ProtocolError> {
    if s.contains('\0') {
        return Err(ProtocolError::NulByte(what));
    }
    Ok(())
}

impl GuestHello {
    /// Checks the hello of an untrusted guest.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_version(self.protocol)?;
        check_text(&self.agent_version)
    }
}

impl GuestToHost {
    /// Checks a message from an untrusted guest.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            GuestToHost::Stdout(data) | GuestToHost::Stderr(data) | GuestToHost::Data(data) => {
                check_chunk(data)
            }
            GuestToHost::Exited(ExitStatus::Signal(sig)) => check_signal(*sig),
            GuestToHost::Exited(ExitStatus::Code(_)) => Ok(()),
            GuestToHost::Refused(text) => check_text(text),
            GuestToHost::Done => Ok(()),
            GuestToHost::Connect(req) => match &req.process {
                Some(process) => check_text(&process.command),
                None => Ok(()),
            },
            GuestToHost::Resolve { name } => validate_name(name),
            GuestToHost::Blocked { protocol, .. } => check_text(protocol),
            GuestToHost::Fs(req) => req.validate(),
        }
    }
}

impl ExecRequest {
    /// Checks a request before it is sent (host) and after it arrives (guest).
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match &self.command {
            Command::Shell(line) => check_no_nul("the command line", line)?,
            Command::Argv(argv) => {
                if argv.is_empty() {
                    return Err(ProtocolError::EmptyCommand);
                }
                check_count("arguments", argv.len(), MAX_ARGS)?;
                for arg in argv {
                    check_no_nul("an argument", arg)?;
                }
            }
        }
        if let Some(size) = self.tty {
            check_size(size)?;
        }
        check_count("environment variables", self.env.len(), MAX_ENV_VARS)?;
        for (name, value) in &self.env {
            validate_env_name(name)?;
            check_no_nul("an environment value", value)?;
        }
        Ok(())
    }
}

impl HostToGuest {
    /// Checks a message from the host (the guest's side of the contract).
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            HostToGuest::Exec(req) => req.validate(),
            HostToGuest::WriteFiles(files) => validate_files(files),
            HostToGuest::Stdin(data) | HostToGuest::Data(data) => check_chunk(data),
            HostToGuest::PutArchive(target) => {
                validate_copy_path(&target.dest)?;
                validate_top_name(&target.name)
            }
            HostToGuest::GetArchive { path } => validate_copy_path(path),
            HostToGuest::Signal { signal, .. } => check_signal(*signal),
            HostToGuest::Resize { size, .. } => check_size(*size),
            HostToGuest::Denied(reason) => check_text(reason),
            HostToGuest::MountWorkspace(mount) => crate::workspace::validate_mount(mount),
            HostToGuest::StdinEof
            | HostToGuest::ExportWorkspace
            | HostToGuest::Fs(_)
            | HostToGuest::StdoutClosed
            | HostToGuest::Shutdown
            | HostToGuest::SetClock { .. }
            | HostToGuest::DataEnd
            | HostToGuest::Connected
            | HostToGuest::Resolved(_) => Ok(()),
        }
    }
}

/// An environment variable name that cannot be passed to a guest command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// Not of the form `[A-Za-z_][A-Za-z0-9_]*`.
    #[error("'{0}' is not a valid environment variable name")]
    Invalid(String),
    /// A name that changes how the loader or the shell runs the command.
    #[error(
        "environment variable '{0}' is not allowed: it changes how the dynamic loader or the shell runs every command"
    )]
    Forbidden(String),
}

/// Prefixes and names refused because they hijack the loader or the shell
/// rather than configure the program.
const FORBIDDEN_ENV_PREFIXES: &[&str] = &["LD_", "BASH_FUNC_"];
const FORBIDDEN_ENV_NAMES: &[&str] = &[
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "IFS",
    "PROMPT_COMMAND",
    "PS4",
    "GLOBIGNORE",
];

/// Checks that `name` may be set in a guest command's environment.
pub fn validate_env_name(name: &str) -> Result<(), EnvError> {
    let mut chars = name.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !valid_start || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(EnvError::Invalid(name.to_owned()));
    }
    let upper = name.to_ascii_uppercase();
    if FORBIDDEN_ENV_PREFIXES.iter().any(|p| upper.starts_with(p))
        || FORBIDDEN_ENV_NAMES.contains(&upper.as_str())
    {
        return Err(EnvError::Forbidden(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_code_follows_the_shell_convention() {
        assert_eq!(ExitStatus::Code(42).shell_code(), 42);
        assert_eq!(ExitStatus::Signal(2).shell_code(), 130);
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    }

    #[test]
    fn commands_display_as_typed() {
        assert_eq!(
            Command::Shell("ls -la | wc".into()).to_string(),
            "ls -la | wc"
        );
        let argv = Command::Argv(vec!["echo".into(), "a  b".into(), "it's".into(), "".into()]);
        assert_eq!(argv.to_string(), "echo 'a  b' 'it'\\''s' ''");
    }

    #[test]
    fn env_names_that_hijack_execution_are_refused() {
        for name in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "ld_audit",
            "BASH_ENV",
            "BASH_FUNC_foo%%",
            "IFS",
            "PROMPT_COMMAND",
            "PS4",
        ] {
            assert!(validate_env_name(name).is_err(), "{name} accepted");
        }
        for name in ["", "1X", "A=B", "A-B", "A B"] {
            assert!(
                matches!(validate_env_name(name), Err(EnvError::Invalid(_))),
                "{name:?} accepted"
            );
        }
        for name in ["FOO", "_x", "PATH", "LANG", "OLD_PWD"] {
            assert_eq!(validate_env_name(name), Ok(()));
        }
    }

    #[test]
    fn exec_requests_are_bounded() {
        let too_many = ExecRequest {
            id: 0,
            command: Command::Argv(vec!["x".into(); MAX_ARGS + 1]),
            env: vec![],
            tty: None,
        };
        assert!(matches!(
            too_many.validate(),
            Err(ProtocolError::TooMany { .. })
        ));
        let empty = ExecRequest {
            id: 0,
            command: Command::Argv(vec![]),
            env: vec![],
            tty: None,
        };
        assert_eq!(empty.validate(), Err(ProtocolError::EmptyCommand));
        let nul = ExecRequest {
            id: 0,
            command: Command::Shell("a\0b".into()),
            env: vec![],
            tty: None,
        };
        assert!(matches!(nul.validate(), Err(ProtocolError::NulByte(_))));
    }

    fn file(path: &str) -> GuestFile {
        GuestFile {
            path: path.into(),
            mode: 0o600,
            contents: b"{}".to_vec(),
        }
    }

    #[test]
    fn guest_files_stay_in_scratch_space() {
        for ok in [
            "/root/.claude.json",
            "/root/.gemini/settings.json",
            "/tmp/x",
            "/run/capsem/ca.pem",
        ] {
            assert_eq!(file(ok).validate(), Ok(()), "{ok}");
        }
        for bad in [
            "relative",
            "/etc/passwd",
            "/root/../etc/passwd",
            "/root/./x",
            "/root//x",
            "/root/",
            "/rootkit/x",
            "/usr/bin/sh",
            "/root/x\0y",
        ] {
            assert!(file(bad).validate().is_err(), "{bad:?} accepted");
        }
        let setuid = GuestFile {
            mode: 0o4755,
            ..file("/root/x")
        };
        assert!(setuid.validate().is_err());
    }

    #[test]
    fn guest_files_are_bounded_in_number_and_size() {
        let many = vec![file("/root/x"); MAX_FILES + 1];
        assert!(matches!(
            validate_files(&many),
            Err(ProtocolError::TooMany { .. })
        ));
        let big = GuestFile {
            contents: vec![0; MAX_FILES_BYTES + 1],
            ..file("/root/x")
        };
        assert!(matches!(
            validate_files(&[big]),
            Err(ProtocolError::FilesTooLarge(_))
        ));
        assert_eq!(validate_files(&[file("/root/a"), file("/tmp/b")]), Ok(()));
    }

    #[test]
    fn dns_names_are_checked() {
        for ok in ["api.anthropic.com", "a.b", "x_y.example.org.", "localhost"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            ".",
            "a..b",
            "a..",
            "evil name",
            &long,
            "ünicode.com",
            "a/b",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn terminal_sizes_are_bounded() {
        let resize = |rows, cols| HostToGuest::Resize {
            exec: 1,
            size: TtySize { rows, cols },
        };
        assert!(resize(50, 200).validate().is_ok());
        assert!(resize(5000, 80).validate().is_err());
        let req = ExecRequest {
            id: 1,
            command: Command::Shell("vim".into()),
            env: vec![],
            tty: Some(TtySize {
                rows: 24,
                cols: 9999,
            }),
        };
        assert_eq!(req.validate(), Err(ProtocolError::BadSize(24, 9999)));
    }

    #[test]
    fn guest_messages_are_checked() {
        let big = GuestToHost::Stdout(vec![0; MAX_CHUNK_BYTES + 1]);
        assert!(matches!(
            big.validate(),
            Err(ProtocolError::ChunkTooLarge(_))
        ));
        assert!(
            GuestToHost::Exited(ExitStatus::Signal(0))
                .validate()
                .is_err()
        );
        assert!(
            GuestToHost::Exited(ExitStatus::Signal(65))
                .validate()
                .is_err()
        );
        assert!(
            GuestToHost::Exited(ExitStatus::Signal(9))
                .validate()
                .is_ok()
        );
        let hello = GuestHello {
            protocol: PROTOCOL_VERSION + 1,
            agent_version: "x".into(),
            init_started_ns: 0,
            ready_ns: 0,
        };
        assert!(matches!(
            hello.validate(),
            Err(ProtocolError::Version { .. })
        ));
    }
}
