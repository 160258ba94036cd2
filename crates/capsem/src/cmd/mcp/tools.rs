//! The tools `capsem mcp` offers. Each answers structured JSON (with its
//! schema) or a tool error in the CLI's words.

use std::collections::BTreeMap;
use std::time::Duration;

use capsem_core::paths;
use capsem_core::session::Store;
use capsem_core::session::events::{self, EVENTS_FILE};
use capsem_proto::Command;
use capsem_service::api::{CreateRequest, SandboxInfo, ServerMsg};
use capsem_service::archive::CopyError;
use hyper::Method;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cmd::guest::{self, Captured, guest_path};
use crate::cmd::sandbox::{encode, service};
use crate::cmd::{copy, net, sessions, workspace};
use crate::exit::Failure;

/// Output kept of each of a command's streams.
const MAX_OUTPUT: usize = 256 * 1024;
/// What `list_dir` reads of its listing command's output.
const MAX_LISTING: usize = 4 << 20;
/// The largest file `read_file` returns.
const MAX_READ: u64 = 4 << 20;
/// Records of each kind `net_log` returns unless asked for fewer.
const NET_RECORDS: usize = 500;
/// A command's time limit unless given.
const EXEC_TIMEOUT_SECS: u64 = 120;

type Answer<T> = Result<Json<T>, String>;

fn failed(f: Failure) -> String {
    f.to_string()
}

/// The MCP server.
#[derive(Clone)]
pub struct Capsem {
    tool_router: ToolRouter<Self>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateArgs {
    /// Its name (lowercase letters, digits and dashes); a generated one when absent.
    name: Option<String>,
    /// vCPUs (the setting vm.cpus when absent).
    cpus: Option<u32>,
    /// Guest RAM in MiB (the setting vm.memory_mib when absent).
    memory_mib: Option<u32>,
    /// A project directory on the host to mount at /root/NAME in the sandbox, read-only;
    /// its changes are kept on the sandbox's disk (see workspace_diff).
    workspace: Option<String>,
    /// Environment variables of every command run in it.
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameArgs {
    /// The sandbox's name (or an unambiguous prefix of it).
    name: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteArgs {
    /// The sandbox's name (or an unambiguous prefix of it).
    name: String,
    /// Stop it first if it runs.
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecArgs {
    /// The sandbox's name (or an unambiguous prefix of it).
    name: String,
    /// A command line, run with bash -c as root in the sandbox.
    command: String,
    /// Text given to the command on stdin (none: stdin is empty).
    stdin: Option<String>,
    /// Kill the command after this many seconds (default 120).
    timeout_secs: Option<u64>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathArgs {
    /// The sandbox's name (or an unambiguous prefix of it).
    name: String,
    /// An absolute path in the sandbox, such as /root/notes.txt.
    path: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteArgs {
    /// The sandbox's name (or an unambiguous prefix of it).
    name: String,
    /// An absolute path in the sandbox; its directory must exist. An existing
    /// directory receives the file under the path's last name.
    path: String,
    /// The file's text (UTF-8).
    content: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetArgs {
    /// A sandbox's name (its current or last boot) or a session id; the newest session when absent.
    id: Option<String>,
    /// The newest records of each kind to return (default and most: 500).
    limit: Option<usize>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionArgs {
    /// A session id or its prefix (`sandbox_list` gives each sandbox's session).
    id: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiffArgs {
    /// A sandbox's name or a session id; the newest session with changes when absent.
    id: Option<String>,
}

#[derive(Serialize, JsonSchema)]
pub struct Sandboxes {
    sandboxes: Vec<SandboxInfo>,
}

#[derive(Serialize, JsonSchema)]
pub struct Deleted {
    deleted: String,
}

#[derive(Serialize, JsonSchema)]
pub struct Ran {
    /// The exit code, when the command exited.
    exit_code: Option<u8>,
    /// The signal that killed it, when one did.
    signal: Option<u8>,
    /// Whether it ran past its time limit and was killed (the sandbox runs on).
    timed_out: bool,
    /// Its stdout (invalid UTF-8 replaced), at most 256 KiB, then a note when cut.
    stdout: String,
    /// Its stderr, as stdout.
    stderr: String,
    /// All the bytes it wrote to stdout.
    stdout_bytes: u64,
    /// All the bytes it wrote to stderr.
    stderr_bytes: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct FileText {
    path: String,
    bytes: u64,
    content: String,
}

#[derive(Serialize, JsonSchema)]
pub struct Written {
    path: String,
    bytes: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Listing {
    path: String,
    entries: Vec<Entry>,
}

#[derive(Serialize, JsonSchema, Debug, PartialEq)]
pub struct Entry {
    name: String,
    /// file, directory, symlink, or other.
    kind: String,
    bytes: u64,
    /// Permission bits, in octal.
    mode: String,
    /// Last modified, ms since the Unix epoch.
    modified_ms: i64,
}

#[derive(Serialize, JsonSchema)]
pub struct NetLog {
    session: String,
    /// The session's totals (allowed, denied, bytes, DNS, model calls, tokens, cost).
    totals: Value,
    /// The newest requests and connections, oldest first (`capsem net log --json`'s `net` records).
    requests: Vec<Value>,
    /// The newest DNS queries (`dns` records).
    dns: Vec<Value>,
    /// The newest model API calls (`model_call` records).
    model_calls: Vec<Value>,
    /// Older records left out.
    omitted: usize,
}

#[derive(Serialize, JsonSchema)]
pub struct Diff {
    /// What changed (`capsem diff --json`'s records) and what will not be applied.
    changes: Value,
    /// The changes as a patch, at most 256 KiB, then a note when cut.
    patch: String,
    patch_bytes: u64,
}

#[tool_router(router = tool_router)]
impl Capsem {
    pub fn new() -> Self {
        Capsem {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Create and boot a sandbox: a hardened Linux microVM that runs until stopped. Answers once it takes commands."
    )]
    async fn sandbox_create(
        &self,
        Parameters(args): Parameters<CreateArgs>,
    ) -> Result<Json<SandboxInfo>, String> {
        let workspace = match args.workspace {
            Some(dir) => Some(std::path::absolute(&dir).map_err(|e| format!("{dir}: {e}"))?),
            None => None,
        };
        let request = CreateRequest {
            name: args.name,
            cpus: args.cpus,
            memory_mib: args.memory_mib,
            env: args.env.into_iter().collect(),
            workspace,
        };
        call(Method::POST, "/v1/sandboxes", Some(&request)).await
    }

    #[tool(
        description = "List the sandboxes and their state (starting, running, suspended, stopped)."
    )]
    async fn sandbox_list(&self) -> Result<Json<Sandboxes>, String> {
        let Json(sandboxes) = call(Method::GET, "/v1/sandboxes", None::<&()>).await?;
        Ok(Json(Sandboxes { sandboxes }))
    }

    #[tool(
        description = "Boot a stopped sandbox again (its disk kept), or resume a suspended one."
    )]
    async fn sandbox_start(
        &self,
        Parameters(args): Parameters<NameArgs>,
    ) -> Result<Json<SandboxInfo>, String> {
        let path = format!("/v1/sandboxes/{}/start", encode(&args.name));
        call(Method::POST, &path, None::<&()>).await
    }

    #[tool(description = "Stop a sandbox; its disk stays, and sandbox_start boots it again.")]
    async fn sandbox_stop(
        &self,
        Parameters(args): Parameters<NameArgs>,
    ) -> Result<Json<SandboxInfo>, String> {
        let path = format!("/v1/sandboxes/{}/stop", encode(&args.name));
        call(Method::POST, &path, None::<&()>).await
    }

    #[tool(description = "Delete a sandbox and its disk (force: stop it first if it runs).")]
    async fn sandbox_delete(
        &self,
        Parameters(args): Parameters<DeleteArgs>,
    ) -> Result<Json<Deleted>, String> {
        let path = format!("/v1/sandboxes/{}?force={}", encode(&args.name), args.force);
        let Json(()) = call(Method::DELETE, &path, None::<&()>).await?;
        Ok(Json(Deleted { deleted: args.name }))
    }

    #[tool(
        description = "Run a command line (bash -c, as root) in a running sandbox and return its exit code, stdout and stderr (each cut at 256 KiB, with the total size). The network is what the host's policy allows."
    )]
    async fn exec(&self, Parameters(args): Parameters<ExecArgs>) -> Result<Json<Ran>, String> {
        let timeout = Duration::from_secs(args.timeout_secs.unwrap_or(EXEC_TIMEOUT_SECS));
        let stdin = args.stdin.unwrap_or_default();
        let command = Command::Shell(args.command);
        let (end, out, err) = guest::run(
            &args.name,
            command,
            stdin.as_bytes(),
            timeout,
            (MAX_OUTPUT, MAX_OUTPUT),
        )
        .await?;
        let (exit_code, signal, timed_out) = match end {
            ServerMsg::Exited { code, signal } => (code, signal, false),
            ServerMsg::TimedOut => (None, None, true),
            ServerMsg::Error { message } => return Err(message),
            ServerMsg::Attached { .. } => return Err("the service answered as a terminal".into()),
        };
        Ok(Json(Ran {
            exit_code,
            signal,
            timed_out,
            stdout_bytes: out.total,
            stderr_bytes: err.total,
            stdout: out.text(),
            stderr: err.text(),
        }))
    }

    #[tool(description = "Read a text file (UTF-8, at most 4 MiB) from a running sandbox.")]
    async fn read_file(
        &self,
        Parameters(args): Parameters<PathArgs>,
    ) -> Result<Json<FileText>, String> {
        let path = guest_path(&args.path)?;
        let top = copy::base_name(path).map_err(failed)?;
        let shown = path.to_owned();
        let data = copy::pull(&args.name, path, move |input| {
            let mut data = Vec::new();
            match copy::one_file(input, &top, MAX_READ, &mut data) {
                Err(CopyError::TooLarge { .. }) => Err(CopyError::Hostile(format!(
                    "{shown} is larger than {} MiB, the most read_file returns; read parts of it with exec (head, tail, sed -n)",
                    MAX_READ >> 20
                ))),
                other => other.map(|()| data),
            }
        })
        .await
        .map_err(failed)?;
        let bytes = data.len() as u64;
        let content = String::from_utf8(data).map_err(|_| {
            format!("{path} is not UTF-8 text ({bytes} bytes); copy it with `capsem cp` instead")
        })?;
        Ok(Json(FileText {
            path: args.path,
            bytes,
            content,
        }))
    }

    #[tool(description = "Write a text file into a running sandbox (replacing one that is there).")]
    async fn write_file(
        &self,
        Parameters(args): Parameters<WriteArgs>,
    ) -> Result<Json<Written>, String> {
        let path = guest_path(&args.path)?;
        let top = copy::base_name(path).map_err(failed)?;
        copy::push(&args.name, path, &top, args.content.as_bytes())
            .await
            .map_err(failed)?;
        Ok(Json(Written {
            bytes: args.content.len() as u64,
            path: args.path,
        }))
    }

    #[tool(
        description = "List a directory of a running sandbox: each entry's name, kind, size, mode and time."
    )]
    async fn list_dir(
        &self,
        Parameters(args): Parameters<PathArgs>,
    ) -> Result<Json<Listing>, String> {
        let path = guest_path(&args.path)?;
        let timeout = Duration::from_secs(EXEC_TIMEOUT_SECS);
        let (end, out, err) = guest::run(
            &args.name,
            guest::listing(path, 1, 1),
            b"",
            timeout,
            (MAX_LISTING, MAX_OUTPUT),
        )
        .await?;
        match end {
            ServerMsg::Exited { code: Some(0), .. } if out.total <= MAX_LISTING as u64 => {
                Ok(Json(Listing {
                    entries: entries(&out.data),
                    path: args.path,
                }))
            }
            ServerMsg::Exited { code: Some(0), .. } => Err(format!(
                "{path} lists more than {} MiB of entries; list it with exec (ls | head)",
                MAX_LISTING >> 20
            )),
            ServerMsg::Error { message } => Err(message),
            _ => Err(String::from_utf8_lossy(&err.data).trim().to_owned()),
        }
    }

    #[tool(
        description = "A sandbox's or session's network activity: the requests allowed and refused by the host's policy (with the rule), DNS queries, and model API calls with tokens and cost."
    )]
    async fn net_log(&self, Parameters(args): Parameters<NetArgs>) -> Result<Json<NetLog>, String> {
        let limit = args.limit.unwrap_or(NET_RECORDS).min(NET_RECORDS);
        blocking(move || net_log(args.id.as_deref(), limit)).await
    }

    #[tool(
        description = "A session's record: its command, status, exit code, boot phases, VM shape and event totals."
    )]
    async fn session_show(
        &self,
        Parameters(args): Parameters<SessionArgs>,
    ) -> Result<Json<serde_json::Map<String, Value>>, String> {
        blocking(move || {
            let store = Store::open(&paths::capsem_home()).map_err(Failure::new)?;
            let id = store.resolve(&args.id).map_err(Failure::new)?;
            let row = store
                .get(&id)
                .map_err(Failure::new)?
                .ok_or_else(|| Failure::new(format!("session {id} vanished")))?;
            match sessions::detail(&store, &row) {
                Value::Object(detail) => Ok(detail),
                _ => Err(Failure::new("a session's record is not an object")),
            }
        })
        .await
    }

    #[tool(
        description = "The changes a sandbox (or a one-shot session) made to its workspace, as records and a patch; they reach the project only when the user runs `capsem apply`."
    )]
    async fn workspace_diff(
        &self,
        Parameters(args): Parameters<DiffArgs>,
    ) -> Result<Json<Diff>, String> {
        blocking(move || {
            let (changes, patch) = workspace::changes_and_patch(args.id.as_deref())?;
            Ok(Diff {
                changes: serde_json::to_value(&changes).map_err(Failure::new)?,
                patch_bytes: patch.len() as u64,
                patch: {
                    let mut kept = Captured::new(MAX_OUTPUT);
                    kept.push(&patch);
                    kept.text()
                },
            })
        })
        .await
    }
}

#[tool_handler(
    router = self.tool_router,
    name = "capsem",
    instructions = "Capsem runs commands in throw-away, hardened Linux microVMs (sandboxes) on this machine. Create one with sandbox_create, run commands in it with exec, move text files with write_file and read_file, look around with list_dir, and delete it with sandbox_delete when done. Its network is limited by the host's policy; net_log shows what was allowed and refused."
)]
impl ServerHandler for Capsem {}

/// A service call, the answer decoded; started first when it is not running.
async fn call<T: serde::de::DeserializeOwned>(
    method: Method,
    path: &str,
    body: Option<&impl Serialize>,
) -> Answer<T> {
    let client = service().await.map_err(failed)?;
    client
        .call(method, path, body)
        .await
        .map(Json)
        .map_err(|e| e.to_string())
}

/// Runs `work` off the runtime (it reads databases, or starts a runtime of
/// its own to ask the service).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Answer<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || tx.send(work()));
    match rx.await {
        Ok(done) => done.map(Json).map_err(failed),
        Err(_) => Err("the tool's work ended without an answer".into()),
    }
}

/// A listing's entries as `list_dir` shows them.
fn entries(listing: &[u8]) -> Vec<Entry> {
    guest::entries(listing)
        .into_iter()
        .map(|stat| Entry {
            kind: match stat.kind {
                'f' => "file",
                'd' => "directory",
                'l' => "symlink",
                _ => "other",
            }
            .to_owned(),
            bytes: stat.size,
            mode: format!("{:o}", stat.mode),
            modified_ms: (stat.modified * 1000.0) as i64,
            name: stat.name,
        })
        .collect()
}

fn net_log(id: Option<&str>, limit: usize) -> Result<NetLog, Failure> {
    let store = Store::open(&paths::capsem_home()).map_err(Failure::new)?;
    let session = net::session_of(&store, id)?;
    let path = store.dir_of(&session).join(EVENTS_FILE);
    let reading = |e| Failure::new(format!("reading {}: {e}", path.display()));
    let (log, counts) = events::network_log_newest(&path, limit).map_err(reading)?;
    let totals = events::network_summary(&path).map_err(reading)?;
    let returned = log.requests.len() + log.dns.len() + log.model_calls.len();
    let omitted = (counts.requests + counts.dns + counts.model_calls).saturating_sub(returned);
    Ok(NetLog {
        requests: log.requests.iter().map(to_value).collect(),
        dns: log.dns.iter().map(to_value).collect(),
        model_calls: log.model_calls.iter().map(to_value).collect(),
        totals: to_value(&totals),
        session,
        omitted,
    })
}

fn to_value(row: &impl Serialize) -> Value {
    serde_json::to_value(row).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_a_schema_and_a_description() {
        let tools = Capsem::new().tool_router.list_all();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        for name in [
            "sandbox_create",
            "sandbox_list",
            "sandbox_start",
            "sandbox_stop",
            "sandbox_delete",
            "exec",
            "read_file",
            "write_file",
            "list_dir",
            "net_log",
            "session_show",
            "workspace_diff",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        for tool in &tools {
            assert!(tool.description.as_ref().is_some_and(|d| d.len() > 20));
            assert_eq!(tool.input_schema.get("type"), Some(&Value::from("object")));
            let output = tool.output_schema.as_ref().expect("an output schema");
            assert_eq!(
                output.get("type"),
                Some(&Value::from("object")),
                "{}",
                tool.name
            );
        }
    }
}
