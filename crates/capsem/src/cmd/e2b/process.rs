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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::control::Sandbox;
use super::fs::resolve;
use super::proto::process::__buffa::oneof::process_event::{Event, data_event::Output as Data};
use super::proto::process::__buffa::oneof::process_input::Input as In;
use super::proto::process::__buffa::oneof::process_selector::Selector;
use super::proto::process::process_event::{DataEvent, EndEvent, KeepAlive, StartEvent};
use super::proto::process::*;
use super::sandbox_of;
use crate::cmd::guest::{self, Output};

/// Commands a sandbox runs at once through this server.
const MAX_PROCESSES: usize = 256;
/// Events waiting for a slow client before the command waits for it.
const QUEUE: usize = 64;
/// A follower that takes no event for this long is dropped.
const STALLED: Duration = Duration::from_secs(30);
/// Bytes of stdin a command's queue holds before `SendInput` waits.
const MAX_STDIN_QUEUED: usize = 8 << 20;
/// Keepalives go this often unless the client asks otherwise.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(50);
/// The first pid given out in each sandbox.
const FIRST_PID: u32 = 100;

/// A sandbox's running commands.
#[derive(Default)]
pub struct Table {
    inner: Mutex<Procs>,
}

#[derive(Default)]
struct Procs {
    next_pid: u32,
    running: HashMap<u32, Arc<Proc>>,
    /// Slots taken by starts still opening their stream.
    opening: usize,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, Procs> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pid and a slot for a command about to start, or a refusal when
    /// the sandbox runs [`MAX_PROCESSES`] already.
    fn reserve(&self) -> Option<(u32, Slot<'_>)> {
        let mut procs = self.lock();
        if procs.running.len() + procs.opening >= MAX_PROCESSES {
            return None;
        }
        let pid = procs.next_pid.max(FIRST_PID);
        procs.next_pid = pid + 1;
        procs.opening += 1;
        Some((pid, Slot(self)))
    }

    fn find(&self, selector: Option<&ProcessSelector>) -> Result<Arc<Proc>, ConnectError> {
        let procs = self.lock();
        let (found, what) = match selector.and_then(|s| s.selector.as_ref()) {
            Some(Selector::Pid(pid)) => (procs.running.get(pid).cloned(), format!("pid {pid}")),
            Some(Selector::Tag(tag)) => (
                procs
                    .running
                    .values()
                    .find(|p| p.info.tag.as_deref() == Some(tag))
                    .cloned(),
                format!("tag {tag:?}"),
            ),
            None => {
                return Err(ConnectError::invalid_argument(
                    "give a process by pid or tag",
                ));
            }
        };
        found.ok_or_else(|| ConnectError::not_found(format!("process with {what} not found")))
    }
}

/// A reserved place in a [`Table`], given back when dropped.
struct Slot<'a>(&'a Table);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.lock().opening -= 1;
    }
}

/// What goes to a command besides its stdin.
enum Control {
    Eof,
    Signal(u8),
    Resize(TtySize),
}

/// A started command.
struct Proc {
    info: ProcessInfo,
    /// Its stdin, each piece holding its share of [`MAX_STDIN_QUEUED`].
    stdin: mpsc::Sender<(Vec<u8>, OwnedSemaphorePermit)>,
    /// Bytes of stdin that may wait.
    stdin_room: Arc<Semaphore>,
    /// Signals, stdin's end and resizes: they pass stdin still waiting.
    control: mpsc::Sender<Control>,
    followers: Mutex<Followers>,
}

/// The streams following a command, and its end once it came (a client
/// that connects as it ends still gets it).
#[derive(Default)]
struct Followers {
    streams: Vec<mpsc::Sender<ProcessEvent>>,
    end: Option<ProcessEvent>,
}

impl Proc {
    fn ended(&self) -> ConnectError {
        ConnectError::not_found(format!("process {} has ended", self.info.pid))
    }

    async fn control(&self, control: Control) -> Result<(), ConnectError> {
        self.control.send(control).await.map_err(|_| self.ended())
    }

    async fn input(&self, data: Vec<u8>) -> Result<(), ConnectError> {
        let bytes = u32::try_from(data.len())
            .ok()
            .filter(|&n| n as usize <= MAX_STDIN_QUEUED)
            .ok_or_else(|| {
                ConnectError::resource_exhausted(format!(
                    "send stdin in pieces of at most {} MiB",
                    MAX_STDIN_QUEUED >> 20
                ))
            })?;
        let permit = self
            .stdin_room
            .clone()
            .acquire_many_owned(bytes)
            .await
            .map_err(|_| self.ended())?;
        self.stdin
            .send((data, permit))
            .await
            .map_err(|_| self.ended())
    }

    fn follow(&self) -> mpsc::Receiver<ProcessEvent> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut followers = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        match &followers.end {
            // The channel has room: this cannot fail.
            Some(end) => drop(tx.try_send(end.clone())),
            None => followers.streams.push(tx),
        }
        rx
    }

    /// Hands `event` to every follower; one that went away, or that took
    /// nothing for [`STALLED`], is dropped (it would hold up the others).
    async fn publish(&self, event: ProcessEvent, last: bool) {
        let streams = {
            let mut followers = self.followers.lock().unwrap_or_else(|e| e.into_inner());
            if last {
                followers.end = Some(event.clone());
            }
            std::mem::take(&mut followers.streams)
        };
        let mut kept = Vec::with_capacity(streams.len());
        for stream in streams {
            if stream.send_timeout(event.clone(), STALLED).await.is_ok() {
                kept.push(stream);
            }
        }
        if !last {
            let mut followers = self.followers.lock().unwrap_or_else(|e| e.into_inner());
            // Followers that came while these were served stay too.
            kept.append(&mut followers.streams);
            followers.streams = kept;
        }
    }
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
        argv.extend(["sh", "-c", script, "sh"].map(String::from));
        argv.push(resolve(cwd)?);
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
    let (pid, slot) = sandbox.processes.reserve().ok_or_else(|| {
        ConnectError::resource_exhausted(format!(
            "sandbox {} runs {MAX_PROCESSES} commands already",
            sandbox.id
        ))
    })?;
    let (mut sink, source) = guest::open(&sandbox.name, &start)
        .await
        .map_err(ConnectError::unavailable)?;
    if !request.stdin.unwrap_or(true) {
        sink.send(guest::control(ClientMsg::StdinEof))
            .await
            .map_err(|e| ConnectError::unavailable(e.to_string()))?;
    }
    let (stdin, stdins) = mpsc::channel(QUEUE);
    let (control, controls) = mpsc::channel(QUEUE);
    let proc = Arc::new(Proc {
        info: ProcessInfo {
            config: config.into(),
            pid,
            tag: request.tag.clone(),
            ..Default::default()
        },
        stdin,
        stdin_room: Arc::new(Semaphore::new(MAX_STDIN_QUEUED)),
        control,
        followers: Mutex::default(),
    });
    let first = proc.follow();
    sandbox.processes.lock().running.insert(pid, proc.clone());
    drop(slot);
    tokio::spawn(write(sink, stdins, controls));
    tokio::spawn(read(source, sandbox, proc, tty.is_some()));
    Ok((pid, first))
}

/// Sends a command's input: controls first, then stdin a piece at a time,
/// so that a kill is not queued behind stdin the command does not read.
async fn write(
    mut sink: guest::Sink,
    mut stdins: mpsc::Receiver<(Vec<u8>, OwnedSemaphorePermit)>,
    mut controls: mpsc::Receiver<Control>,
) {
    loop {
        let msg = tokio::select! {
            biased;
            control = controls.recv() => match control {
                Some(Control::Eof) => ClientMsg::StdinEof,
                Some(Control::Signal(signal)) => ClientMsg::Signal { signal },
                Some(Control::Resize(size)) => ClientMsg::Resize { rows: size.rows, cols: size.cols },
                None => return,
            },
            data = stdins.recv() => match data {
                Some((data, _permit)) => {
                    if guest::feed(&mut sink, &data).await.is_err() {
                        return;
                    }
                    continue;
                }
                None => return,
            },
        };
        if sink.send(guest::control(msg)).await.is_err() {
            return;
        }
    }
}

/// Turns a command's output into events for its followers; at its end,
/// takes it out of the table.
async fn read(mut source: guest::Source, sandbox: Arc<Sandbox>, proc: Arc<Proc>, pty: bool) {
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
        proc.publish(event(data), false).await;
    };
    sandbox.processes.lock().running.remove(&proc.info.pid);
    proc.publish(event(end_of(end)), true).await;
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
        let sandbox = sandbox_of(&ctx)?;
        let mut processes: Vec<ProcessInfo> = sandbox
            .processes
            .lock()
            .running
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
        let proc = sandbox_of(&ctx)?
            .processes
            .find(request.process.as_option())?;
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
        let (pid, rx) = spawn(sandbox_of(&ctx)?, request.to_owned_message()).await?;
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
        let proc = sandbox_of(&ctx)?
            .processes
            .find(request.process.as_option())?;
        if let Some(size) = request.pty.as_option().and_then(|p| p.size.as_option()) {
            proc.control(Control::Resize(size_of(size))).await?;
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
        let proc = sandbox_of(&ctx)?
            .processes
            .find(request.process.as_option())?;
        let data = match request.input.as_option().and_then(|i| i.input.as_ref()) {
            Some(In::Stdin(data) | In::Pty(data)) => data.clone(),
            None => Vec::new(),
        };
        proc.input(data).await?;
        Response::ok(SendInputResponse::default())
    }

    async fn send_signal(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, SendSignalRequest>,
    ) -> ServiceResult<SendSignalResponse> {
        let request = request.to_owned_message();
        let proc = sandbox_of(&ctx)?
            .processes
            .find(request.process.as_option())?;
        let signal = match request.signal.as_known() {
            Some(Signal::SIGNAL_SIGKILL) => 9,
            Some(Signal::SIGNAL_SIGTERM) => 15,
            _ => return Err(ConnectError::invalid_argument("give SIGTERM or SIGKILL")),
        };
        proc.control(Control::Signal(signal)).await?;
        Response::ok(SendSignalResponse::default())
    }

    async fn close_stdin(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, CloseStdinRequest>,
    ) -> ServiceResult<CloseStdinResponse> {
        let request = request.to_owned_message();
        let proc = sandbox_of(&ctx)?
            .processes
            .find(request.process.as_option())?;
        proc.control(Control::Eof).await?;
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
