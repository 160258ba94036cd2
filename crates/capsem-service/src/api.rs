//! The service's wire types, shared by the service, the supervisors and
//! every client (the CLI, the web UI, `capsem mcp`).
//! `docs/api.md` describes the routes; `docs/openapi.json` is checked
//! against them by a test.

use capsem_proto::{Command, ExitStatus, TtySize};
use serde::{Deserialize, Serialize};

/// `POST /v1/sandboxes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The name; a generated one when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// vCPUs (`vm.cpus` when absent).
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Guest RAM in MiB (`vm.memory_mib` when absent).
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// Environment of every command run in it.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// A project directory on the host to mount at `/root/NAME`, read-only,
    /// its changes kept on the sandbox's disk (docs/workspace.md).
    #[serde(default)]
    pub workspace: Option<std::path::PathBuf>,
}

/// Whether a sandbox's VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Its supervisor boots its VM (or does not answer yet); it takes
    /// commands once running.
    Starting,
    /// Its supervisor and VM run and take commands.
    Running,
    /// Its disk waits on the host; `start` boots it.
    Stopped,
    /// Its supervisor runs, its VM's memory is in a file and no QEMU runs;
    /// `resume` (or `start`) continues it where it was.
    Suspended,
}

/// A sandbox, as `GET /v1/sandboxes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SandboxInfo {
    /// Its name.
    pub name: String,
    /// Starting, running, suspended or stopped.
    pub state: State,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: i64,
    /// When its VM started, when it runs.
    pub started_ms: Option<i64>,
    /// vCPUs.
    pub cpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Size of its disk in GiB.
    pub disk_gib: u32,
    /// The session of its current (or last) boot.
    pub session: Option<String>,
    /// Resident memory of its supervisor and QEMU, in KiB, when it runs.
    pub host_rss_kib: Option<u64>,
    /// When its last command started or ended, ms since the Unix epoch.
    pub last_activity_ms: Option<i64>,
}

/// What a supervisor says of itself (`GET /info` on its socket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorInfo {
    /// The session of this boot.
    pub session: String,
    /// When the VM's agent was ready, ms since the Unix epoch.
    pub started_ms: i64,
    /// The supervisor's pid.
    pub pid: u32,
    /// QEMU's pid.
    pub vm_pid: Option<u32>,
    /// When the last command started or ended.
    pub last_activity_ms: i64,
    /// Whether its VM is suspended (no QEMU runs).
    #[serde(default)]
    pub suspended: bool,
}

/// The service itself (`GET /v1/service`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Its pid.
    pub pid: u32,
    /// capsem's version.
    pub version: String,
    /// When it started, ms since the Unix epoch.
    pub started_ms: i64,
    /// Sandboxes it knows.
    pub sandboxes: u32,
    /// Of which running.
    pub running: u32,
}

/// `POST /v1/ui` (on the unix socket only): serve the web UI.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiRequest {
    /// The port on 127.0.0.1 (`ui.port` when absent).
    #[serde(default)]
    pub port: Option<u16>,
}

/// Where the web UI is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UiInfo {
    /// Its address, `http://127.0.0.1:PORT/`.
    pub url: String,
    /// The address that signs a browser in: a one-time code, valid for
    /// two minutes.
    pub login_url: String,
}

/// The first message of an exec WebSocket, from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecStart {
    /// The command.
    pub command: Command,
    /// Variables added to the sandbox's environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Run it on a terminal of this size.
    #[serde(default)]
    pub tty: Option<TtySize>,
    /// Kill its process group after this many ms.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Text messages of an exec WebSocket from the client; binary messages
/// are the command's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// Stdin ends.
    StdinEof,
    /// Deliver this signal to the command's process group.
    Signal {
        /// Its number.
        signal: u8,
    },
    /// Its terminal changed size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// The client takes no more stdout (the command gets SIGPIPE).
    StdoutClosed,
}

/// Text messages of an exec WebSocket from the server; binary messages are
/// output, their first byte [`STDOUT`] or [`STDERR`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// A terminal's first message: the id to attach to it again with
    /// (`GET /v1/sandboxes/{name}/terminal?id=ID`).
    Attached {
        /// The terminal's id in its sandbox.
        id: u32,
    },
    /// The command ended.
    Exited {
        /// Its exit code, when it exited.
        code: Option<u8>,
        /// The signal that killed it, when one did.
        signal: Option<u8>,
    },
    /// It ran past its timeout; its process group was killed.
    TimedOut,
    /// It could not run, or the sandbox failed under it.
    Error {
        /// What happened.
        message: String,
    },
}

impl ServerMsg {
    /// The message for an exit status.
    pub fn exited(status: ExitStatus) -> Self {
        match status {
            ExitStatus::Code(code) => ServerMsg::Exited {
                code: Some(code),
                signal: None,
            },
            ExitStatus::Signal(signal) => ServerMsg::Exited {
                code: None,
                signal: Some(signal),
            },
        }
    }
}

/// The tag of a stdout chunk.
pub const STDOUT: u8 = 1;
/// The tag of a stderr chunk.
pub const STDERR: u8 = 2;

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in the user's words.
    pub error: String,
}
