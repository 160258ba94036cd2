//! envd's `process.Process` service: commands started in a sandbox, each
//! an exec WebSocket to the service that this process keeps open, so that
//! later calls (input, signals, a second client's `Connect`) reach it.
//!
//! A pid here is the number E2B's SDKs hold for the command, given out by
//! this server (from 100 up in each sandbox), not the guest kernel's pid.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capsem_proto::{Command, TtySize};
use capsem_service::api::{ClientMsg, ExecStart, ServerMsg};
use connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};
use futures::{SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;

use super::control::Sandbox;
use super::proto::process::__buffa::oneof::process_event::{Event, data_event::Output as Data};
use super::proto::process::__buffa::oneof::process_input::Input as In;
use super::proto::process::__buffa::oneof::process_selector::Selector;
use super::proto::process::process_event::{DataEvent, EndEvent, KeepAlive, StartEvent};
use super::proto::process::*;
use crate::cmd::guest::{self, Output};

/// Commands a sandbox runs at once through this server.
const MAX_PROCESSES: usize = 256;
/// Events waiting for a slow client before the command waits for it.
const QUEUE: usize = 64;
/// Keepalives go this often unless the client asks otherwise.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(50);
/// The first pid given out in each sandbox.
const FIRST_PID: u32 = 100;

/// A sandbox's running commands.
#[derive(Default)]
pub struct Table {
    inner: Mutex<(u32, HashMap<u32, Arc<Proc>>)>,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u32, HashMap<u32, Arc<Proc>>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn find(&self, selector: Option<&ProcessSelector>) -> Result<Arc<Proc>, ConnectError> {
        let table = self.lock();
        let found = match selector.and_then(|s| s.selector.as_ref()) {
            Some(Selector::Pid(pid)) => table.1.get(pid).cloned(),
            Some(Selector::Tag(tag)) => table
                .1
                .values()
                .find(|p| p.info.tag.as_deref() == Some(tag))
                .cloned(),
            None => {
                return Err(ConnectError::invalid_argument(
                    "give a process by pid or tag",
                ));
            }
        };
        found.ok_or_else(|| {
            let what = match selector.and_then(|s| s.selector.as_ref()) {
                Some(Selector::Pid(pid)) => format!("pid {pid}"),
                Some(Selector::Tag(tag)) => format!("tag {tag:?}"),
                None => String::new(),
            };
            ConnectError::not_found(format!("process with {what} not found"))
        })
    }
}

/// What goes to a command.
enum Input {
    Data(Vec<u8>),
    Eof,
    Signal(u8),
    Resize(TtySize),
}

/// A started command.
struct Proc {
    info: ProcessInfo,
    input: mpsc::Sender<Input>,
    /// The streams of the clients following it.
    watchers: Mutex<Vec<mpsc::Sender<ProcessEvent>>>,
}

impl Proc {
    async fn send(&self, input: Input) -> Result<(), ConnectError> {
        self.input
            .send(input)
            .await
            .map_err(|_| ConnectError::not_found(format!("process {} has ended", self.info.pid)))
    }

    fn follow(&self) -> mpsc::Receiver<ProcessEvent> {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    /// Hands `event` to every follower, waiting for slow ones; one that
    /// went away is dropped.
    async fn publish(&self, event: ProcessEvent) {
        let watchers =
            std::mem::take(&mut *self.watchers.lock().unwrap_or_else(|e| e.into_inner()));
        let mut kept = Vec::with_capacity(watchers.len());
        for watcher in watchers {
            if watcher.send(event.clone()).await.is_ok() {
                kept.push(watcher);
            }
        }
        let mut now = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        // Followers that came while this one was handed out stay too.
        kept.append(&mut now);
        *now = kept;
    }
}

/// The sandbox a gated request is for.
pub fn sandbox(ctx: &RequestContext) -> Result<Arc<Sandbox>, ConnectError> {
    ctx.extensions()
        .get::<Arc<Sandbox>>()
        .cloned()
        .ok_or_else(|| ConnectError::unauthenticated("no sandbox named by E2b-Sandbox-Id"))
}

/// Refuses a user other than root: the guest runs everything as root,
/// and running a request for another user as root would be a surprise.
pub fn only_root(user: Option<String>) -> Result<(), String> {
    match user {
        None => Ok(()),
        Some(user) if user == "root" => Ok(()),
        Some(user) => Err(format!(
            "capsem runs commands as root; there is no user {user:?} in its guest (leave user unset)"
        )),
    }
}

fn check_user(ctx: &RequestContext) -> Result<(), ConnectError> {
    let user = user_of(ctx.header("authorization").and_then(|v| v.to_str().ok()));
    only_root(user).map_err(ConnectError::invalid_argument)
}

/// The user of envd's `Authorization: Basic base64(USER:)`.
pub fn user_of(header: Option<&str>) -> Option<String> {
    use base64::Engine;
    let encoded = header?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split(':').next().unwrap_or("");
    (!user.is_empty()).then(|| user.to_owned())
}

/// The command a `ProcessConfig` asks for: its argv, run in `cwd` when given.
fn command_of(config: &ProcessConfig) -> Result<Command, ConnectError> {
    if config.cmd.is_empty() {
        return Err(ConnectError::invalid_argument("the process has no cmd"));
    }
    let mut argv = Vec::new();
    if let Some(cwd) = config.cwd.as_deref().filter(|c| !c.is_empty()) {
        let script = "cd -- \"$1\" || exit 1; shift; exec \"$@\"";
        argv.extend(["sh", "-c", script, "sh", cwd].map(String::from));
    }
    argv.push(config.cmd.clone());
    argv.extend(config.args.iter().cloned());
    Ok(Command::Argv(argv))
}

fn event(event: impl Into<Event>) -> ProcessEvent {
    ProcessEvent {
        event: Some(event.into()),
        ..Default::default()
    }
}

/// The end event of a command's last message (or of its stream's loss).
fn end_of(end: Option<ServerMsg>) -> EndEvent {
    let (exit_code, exited, status, error) = match end {
        Some(ServerMsg::Exited {
            code: Some(code), ..
        }) => (i32::from(code), true, format!("exit status {code}"), None),
        Some(ServerMsg::Exited { signal, .. }) => {
            let signal = signal.unwrap_or(0);
            (-1, false, format!("signal: {signal}"), None)
        }
        Some(ServerMsg::TimedOut) => (-1, false, "timed out".into(), Some("timed out".into())),
        Some(ServerMsg::Error { message }) => (-1, false, "error".into(), Some(message)),
        Some(ServerMsg::Attached { .. }) | None => (
            -1,
            false,
            "error".into(),
            Some("the sandbox ended the command's stream without its exit status".into()),
        ),
    };
    EndEvent {
        exit_code,
        exited,
        status,
        error,
        ..Default::default()
    }
}

/// Starts `request` in `sandbox`; its pid and the first follower's events.
async fn spawn(
    sandbox: Arc<Sandbox>,
    request: StartRequest,
) -> Result<(u32, mpsc::Receiver<ProcessEvent>), ConnectError> {
    let config = request.process.as_option().cloned().unwrap_or_default();
    let tty = request
        .pty
        .as_option()
        .and_then(|p| p.size.as_option())
        .map(size_of);
    let start = ExecStart {
        command: command_of(&config)?,
        env: config
            .envs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        tty,
        timeout_ms: None,
    };
    let pid = {
        let mut table = sandbox.processes.lock();
        if table.1.len() >= MAX_PROCESSES {
            return Err(ConnectError::resource_exhausted(format!(
                "sandbox {} runs {MAX_PROCESSES} commands already",
                sandbox.id
            )));
        }
        let pid = table.0.max(FIRST_PID);
        table.0 = pid + 1;
        pid
    };
    let (mut sink, mut source) = guest::open(&sandbox.name, &start)
        .await
        .map_err(ConnectError::unavailable)?;
    if !request.stdin.unwrap_or(true) {
        sink.send(guest::control(ClientMsg::StdinEof))
            .await
            .map_err(|e| ConnectError::unavailable(e.to_string()))?;
    }
    let (input, mut inputs) = mpsc::channel::<Input>(QUEUE);
    let proc = Arc::new(Proc {
        info: ProcessInfo {
            config: config.into(),
            pid,
            tag: request.tag.clone(),
            ..Default::default()
        },
        input,
        watchers: Mutex::default(),
    });
    let first = proc.follow();
    sandbox.processes.lock().1.insert(pid, proc.clone());
    tokio::spawn(async move {
        while let Some(input) = inputs.recv().await {
            let msg = match input {
                Input::Data(data) => {
                    if guest::feed(&mut sink, &data).await.is_err() {
                        break;
                    }
                    continue;
                }
                Input::Eof => ClientMsg::StdinEof,
                Input::Signal(signal) => ClientMsg::Signal { signal },
                Input::Resize(size) => ClientMsg::Resize {
                    rows: size.rows,
                    cols: size.cols,
                },
            };
            if sink.send(guest::control(msg)).await.is_err() {
                break;
            }
        }
    });
    let pty = tty.is_some();
    tokio::spawn(async move {
        let end = loop {
            let data = match guest::next(&mut source).await {
                Ok(Some(Output::Stdout(data))) if pty => Data::Pty(data.to_vec()),
                Ok(Some(Output::Stdout(data))) => Data::Stdout(data.to_vec()),
                Ok(Some(Output::Stderr(data))) => Data::Stderr(data.to_vec()),
                Ok(Some(Output::End(end))) => break Some(end),
                Ok(None) => break None,
                Err(message) => break Some(ServerMsg::Error { message }),
            };
            let data = DataEvent {
                output: Some(data),
                ..Default::default()
            };
            proc.publish(event(data)).await;
        };
        sandbox.processes.lock().1.remove(&pid);
        proc.publish(event(end_of(end))).await;
    });
    Ok((pid, first))
}

fn size_of(size: &pty::Size) -> TtySize {
    TtySize {
        rows: u16::try_from(size.rows).unwrap_or(u16::MAX).max(1),
        cols: u16::try_from(size.cols).unwrap_or(u16::MAX).max(1),
    }
}

/// `Keepalive-Ping-Interval` (seconds), within 1 s..10 min.
fn keepalive_of(ctx: &RequestContext) -> Duration {
    ctx.header("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_KEEPALIVE, |secs| {
            Duration::from_secs(secs.clamp(1, 600))
        })
}

/// A follower's stream: the start event, then the command's events, with
/// a keepalive when nothing came for `keepalive`.
fn events(
    pid: u32,
    rx: mpsc::Receiver<ProcessEvent>,
    keepalive: Duration,
) -> impl Stream<Item = ProcessEvent> + Send + 'static {
    let start = event(StartEvent {
        pid,
        ..Default::default()
    });
    let rest = futures::stream::unfold(rx, move |mut rx| async move {
        match tokio::time::timeout(keepalive, rx.recv()).await {
            Ok(Some(ev)) => Some((ev, rx)),
            Ok(None) => None,
            Err(_) => Some((event(KeepAlive::default()), rx)),
        }
    });
    futures::stream::once(std::future::ready(start)).chain(rest)
}

/// The `process.Process` service.
pub struct Processes;

// The trait's `impl Trait` answers are spelled as the concrete types.
#[allow(refining_impl_trait)]
impl Process for Processes {
    async fn list(
        &self,
        ctx: RequestContext,
        _request: ServiceRequest<'_, ListRequest>,
    ) -> ServiceResult<ListResponse> {
        let sandbox = sandbox(&ctx)?;
        let mut processes: Vec<ProcessInfo> = sandbox
            .processes
            .lock()
            .1
            .values()
            .map(|p| p.info.clone())
            .collect();
        processes.sort_by_key(|p| p.pid);
        Response::ok(ListResponse {
            processes,
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, ConnectRequest>,
    ) -> ServiceResult<ServiceStream<ConnectResponse>> {
        let request = request.to_owned_message();
        let proc = sandbox(&ctx)?.processes.find(request.process.as_option())?;
        let stream = events(proc.info.pid, proc.follow(), keepalive_of(&ctx)).map(|event| {
            Ok(ConnectResponse {
                event: event.into(),
                ..Default::default()
            })
        });
        Response::stream_ok(stream)
    }

    async fn start(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, StartRequest>,
    ) -> ServiceResult<ServiceStream<StartResponse>> {
        check_user(&ctx)?;
        let (pid, rx) = spawn(sandbox(&ctx)?, request.to_owned_message()).await?;
        let stream = events(pid, rx, keepalive_of(&ctx)).map(|event| {
            Ok(StartResponse {
                event: event.into(),
                ..Default::default()
            })
        });
        Response::stream_ok(stream)
    }

    async fn update(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, UpdateRequest>,
    ) -> ServiceResult<UpdateResponse> {
        let request = request.to_owned_message();
        let proc = sandbox(&ctx)?.processes.find(request.process.as_option())?;
        if let Some(size) = request.pty.as_option().and_then(|p| p.size.as_option()) {
            proc.send(Input::Resize(size_of(size))).await?;
        }
        Response::ok(UpdateResponse::default())
    }

    async fn stream_input(
        &self,
        _ctx: RequestContext,
        _requests: connectrpc::InboundStream<StreamInputRequest>,
    ) -> ServiceResult<StreamInputResponse> {
        Err(ConnectError::unimplemented(
            "capsem's E2B server takes stdin by SendInput; StreamInput is not implemented",
        ))
    }

    async fn send_input(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, SendInputRequest>,
    ) -> ServiceResult<SendInputResponse> {
        let request = request.to_owned_message();
        let proc = sandbox(&ctx)?.processes.find(request.process.as_option())?;
        let data = match request.input.as_option().and_then(|i| i.input.as_ref()) {
            Some(In::Stdin(data) | In::Pty(data)) => data.clone(),
            None => Vec::new(),
        };
        proc.send(Input::Data(data)).await?;
        Response::ok(SendInputResponse::default())
    }

    async fn send_signal(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, SendSignalRequest>,
    ) -> ServiceResult<SendSignalResponse> {
        let request = request.to_owned_message();
        let proc = sandbox(&ctx)?.processes.find(request.process.as_option())?;
        let signal = match request.signal.as_known() {
            Some(Signal::SIGNAL_SIGKILL) => 9,
            Some(Signal::SIGNAL_SIGTERM) => 15,
            _ => return Err(ConnectError::invalid_argument("give SIGTERM or SIGKILL")),
        };
        proc.send(Input::Signal(signal)).await?;
        Response::ok(SendSignalResponse::default())
    }

    async fn close_stdin(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, CloseStdinRequest>,
    ) -> ServiceResult<CloseStdinResponse> {
        let request = request.to_owned_message();
        let proc = sandbox(&ctx)?.processes.find(request.process.as_option())?;
        proc.send(Input::Eof).await?;
        Response::ok(CloseStdinResponse::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_basic_user_is_read_and_only_root_is_taken() {
        assert_eq!(user_of(Some("Basic dXNlcjo=")), Some("user".into()));
        assert_eq!(user_of(Some("Basic cm9vdDo=")), Some("root".into()));
        assert_eq!(user_of(Some("Bearer x")), None);
        assert_eq!(user_of(Some("Basic !!!")), None);
        assert_eq!(user_of(None), None);
    }

    #[test]
    fn a_cwd_wraps_the_argv_without_a_shell_line() {
        let config = ProcessConfig {
            cmd: "/bin/bash".into(),
            args: vec!["-l".into(), "-c".into(), "echo $HOME".into()],
            cwd: Some("/tmp/a b".into()),
            ..Default::default()
        };
        let Command::Argv(argv) = command_of(&config).unwrap() else {
            panic!("an argv");
        };
        assert_eq!(argv[4], "/tmp/a b");
        assert_eq!(&argv[5..], ["/bin/bash", "-l", "-c", "echo $HOME"]);
        let empty = ProcessConfig::default();
        assert!(command_of(&empty).is_err());
    }

    #[test]
    fn ends_say_how_the_command_ended() {
        let exited = end_of(Some(ServerMsg::Exited {
            code: Some(3),
            signal: None,
        }));
        assert_eq!((exited.exit_code, exited.exited), (3, true));
        let killed = end_of(Some(ServerMsg::Exited {
            code: None,
            signal: Some(9),
        }));
        assert_eq!((killed.exit_code, killed.exited), (-1, false));
        assert!(end_of(None).error.is_some());
    }
}
