//! A running sandbox's supervisor: one process per sandbox, holding its
//! VM open and serving it on `supervisor.sock`.
//!
//! It boots the VM with the sandbox's disk at `/root`, records the boot as
//! a session, and serves `GET /info`, `GET /exec` (WebSocket),
//! `POST /suspend`, `POST /resume` and `POST /stop` until it is stopped,
//! its VM dies, or it idles past `sandbox.idle_timeout_secs` (a suspended
//! sandbox is never idle-stopped: that would throw its memory away). Then
//! it stops the VM (the guest syncs its disk), closes the session and
//! removes its socket. A sandbox stopped while suspended loses its memory;
//! its disk is as the suspend left it (flushed, its journal replayed at the
//! next mount).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use capsem_core::session::store::now_ms;
use capsem_core::{BootSpec, Booted, End, Live, Notice, Outcome, RunError, Sandbox};
use capsem_proto::{ExitStatus, GuestFile};
use tokio::sync::Notify;

use crate::api::SupervisorInfo;
use crate::layout::SandboxDir;
use crate::terminals::Terminals;
use crate::{bridge, lock, peer};

/// What a supervisor runs.
pub struct Spec {
    /// The sandbox's directory.
    pub dir: SandboxDir,
    /// Its name.
    pub name: String,
    /// The sandbox machinery, with the sandbox's VM shape.
    pub sandbox: Sandbox,
    /// Environment of every command.
    pub env: Vec<(String, String)>,
    /// Files written at boot (the AI CLIs' settings).
    pub files: Vec<GuestFile>,
    /// The project it works on.
    pub workspace: Option<capsem_core::WorkspaceSpec>,
    /// Stop after this long without a command.
    pub idle_timeout: Option<Duration>,
}

/// A supervisor could not run its sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The VM did not boot or failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// Another supervisor runs this sandbox.
    #[error("the sandbox is running already")]
    Running,
    /// Its disk or socket could not be opened.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> SupervisorError {
    let what = what.to_owned();
    move |source| SupervisorError::Io { what, source }
}

struct Shared {
    live: Box<Live>,
    dir: SandboxDir,
    env: Vec<(String, String)>,
    session: String,
    started_ms: i64,
    last_activity_ms: AtomicI64,
    running_execs: AtomicU32,
    terminals: Terminals,
    stop: Notify,
}

/// Boots the sandbox and serves it until it ends.
pub async fn run(spec: Spec) -> Result<(), SupervisorError> {
    let _alive = lock::take(&spec.dir.lock(), Duration::from_secs(1))
        .map_err(io_err("locking the sandbox"))?
        .ok_or(SupervisorError::Running)?;
    let notice: Notice = Arc::new(|text: &str| tracing::warn!("{text}"));
    // A supervisor that died while its VM was suspended took the channel
    // the guest was in the middle of: the state cannot be resumed.
    if std::fs::remove_file(spec.dir.suspended_state()).is_ok() {
        notice(
            "the suspended memory of the last boot was lost with its supervisor; booting afresh, the disk kept",
        );
    }
    let command = format!("sandbox {}", spec.name);
    let (mut opened, assets) = spec.sandbox.open(&command, &notice)?;
    spec.dir
        .set_last_session(opened.id())
        .map_err(io_err("recording the session"))?;
    let booted = match open_disk(&spec.dir) {
        Ok(disk) => {
            let boot = BootSpec {
                assets,
                home_disk: Some(disk),
                files: spec.files,
                workspace: spec.workspace,
            };
            let never = std::future::pending();
            spec.sandbox
                .boot(&mut opened, boot, notice.clone(), never)
                .await
        }
        Err(e) => Err(e),
    };
    let live = match booted {
        Ok(Booted::Ready(live)) => live,
        Ok(Booted::Interrupted(_)) => unreachable!("nothing cancels a supervisor's boot"),
        Err(e) => {
            let end = End {
                live: None,
                result: Err(&e),
                transcript_cut_bytes: 0,
            };
            opened.close(end, &*notice).await;
            return Err(e.into());
        }
    };
    tracing::info!("sandbox {} ready, session {}", spec.name, opened.id());
    let shared = Arc::new(Shared {
        live,
        dir: spec.dir.clone(),
        env: spec.env,
        session: opened.id().to_owned(),
        started_ms: now_ms(),
        last_activity_ms: AtomicI64::new(now_ms()),
        running_execs: AtomicU32::new(0),
        terminals: Terminals::default(),
        stop: Notify::new(),
    });
    let served = serve(&spec.dir, shared.clone(), spec.idle_timeout).await;
    let died = shared.live.wait_now();
    let suspended = shared.live.is_suspended();
    if suspended {
        tracing::info!("stopped while suspended: its memory is discarded");
        let _ = std::fs::remove_file(spec.dir.suspended_state());
    }
    if died.is_none()
        && !suspended
        && let Err(e) = shared.live.save_changes().await
    {
        tracing::warn!("keeping the workspace's changes: {e}");
    }
    shared.live.stop(died.is_none()).await;
    let result = match died {
        None => Ok(Outcome::Exited(ExitStatus::Code(0))),
        Some(exit) => Err(shared.live.died(exit)),
    };
    // The session's record closes once every holder of its event log is
    // gone: the commands still streaming end with the VM.
    match sole_owner(shared).await {
        Some(shared) => {
            let end = End {
                live: Some(shared.live),
                result: result.as_ref(),
                transcript_cut_bytes: 0,
            };
            opened.close(end, &*notice).await;
        }
        None => tracing::warn!("commands outlived the VM; the session is repaired as killed"),
    }
    let _ = std::fs::remove_file(spec.dir.socket());
    tracing::info!("sandbox {} stopped", spec.name);
    served
}

/// `shared` once no handler holds it any more.
async fn sole_owner(mut shared: Arc<Shared>) -> Option<Shared> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Arc::try_unwrap(shared) {
            Ok(alone) => return Some(alone),
            Err(_) if tokio::time::Instant::now() > deadline => return None,
            Err(again) => shared = again,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sandbox's disk, read-write.
fn open_disk(dir: &SandboxDir) -> Result<capsem_core::vm::DiskFiles, RunError> {
    capsem_core::vm::DiskFiles::open(&dir.disk()).map_err(|source| RunError::Io {
        what: format!("opening the sandbox's disk {}", dir.disk().display()),
        source,
    })
}

/// Serves the socket until a stop, the VM's end or the idle timeout.
async fn serve(
    dir: &SandboxDir,
    shared: Arc<Shared>,
    idle_timeout: Option<Duration>,
) -> Result<(), SupervisorError> {
    let listener = peer::bind(&dir.socket()).map_err(io_err("binding the supervisor's socket"))?;
    let router = Router::new()
        .route("/info", get(info))
        .route("/exec", get(exec))
        .route("/terminal", get(terminal))
        .route("/stop", post(stop))
        .route("/suspend", post(suspend))
        .route("/resume", post(resume))
        .route("/workspace/save", post(save_workspace))
        .route("/files", get(get_files).put(put_files))
        .with_state(shared.clone());
    let ended = async move {
        tokio::select! {
            () = shared.stop.notified() => {}
            _ = shared.live.wait() => tracing::warn!("the VM stopped on its own"),
            () = idle(&shared, idle_timeout) => tracing::info!("idle past sandbox.idle_timeout_secs"),
        }
    };
    peer::serve(listener, router, ended)
        .await
        .map_err(io_err("serving the supervisor's socket"))
}

/// Completes once no command has run for `limit`.
async fn idle(shared: &Shared, limit: Option<Duration>) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    let limit_ms = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let quiet = now_ms() - shared.last_activity_ms.load(Ordering::Relaxed);
        let busy = shared.running_execs.load(Ordering::Relaxed) > 0;
        if !busy && !shared.live.is_suspended() && quiet >= limit_ms {
            return;
        }
    }
}

async fn info(State(shared): State<Arc<Shared>>) -> axum::Json<SupervisorInfo> {
    axum::Json(SupervisorInfo {
        session: shared.session.clone(),
        started_ms: shared.started_ms,
        pid: std::process::id(),
        vm_pid: shared.live.vm_pid(),
        last_activity_ms: shared.last_activity_ms.load(Ordering::Relaxed),
        suspended: shared.live.is_suspended(),
    })
}

async fn exec(State(shared): State<Arc<Shared>>, upgrade: WebSocketUpgrade) -> impl IntoResponse {
    let upgrade = upgrade
        .max_message_size(bridge::MAX_MESSAGE_BYTES)
        .max_frame_size(bridge::MAX_MESSAGE_BYTES);
    upgrade.on_upgrade(move |socket| async move {
        let _running = Running::count(shared.clone());
        bridge::serve_exec(socket, &shared.live, &shared.env).await;
    })
}

/// `?id=` of a terminal to attach to again; none opens one.
#[derive(serde::Deserialize)]
struct TerminalQuery {
    id: Option<u32>,
}

/// `GET /terminal`: a terminal that stays when its client goes (see
/// [`crate::terminals`]).
async fn terminal(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<TerminalQuery>,
    upgrade: WebSocketUpgrade,
) -> impl IntoResponse {
    let upgrade = upgrade
        .max_message_size(bridge::MAX_MESSAGE_BYTES)
        .max_frame_size(bridge::MAX_MESSAGE_BYTES);
    upgrade.on_upgrade(move |mut socket| async move {
        let id = match query.id {
            Some(id) => Ok(id),
            None => open_terminal(&shared, &mut socket).await,
        };
        match id {
            Ok(id) => shared.terminals.attach(id, socket).await,
            Err(message) => bridge::refuse(socket, message).await,
        }
    })
}

/// Reads what to run from `socket` and starts it on a terminal.
async fn open_terminal(
    shared: &Arc<Shared>,
    socket: &mut axum::extract::ws::WebSocket,
) -> Result<u32, String> {
    let start = bridge::read_start(socket).await?;
    if start.tty.is_none() || start.timeout_ms.is_some() {
        return Err("a terminal needs a tty size and takes no timeout".to_owned());
    }
    let mut env = shared.env.clone();
    env.extend(start.env);
    let spec = capsem_core::channel::ExecSpec {
        command: start.command,
        env,
        tty: start.tty,
        timeout: None,
    };
    let owner = shared.clone();
    shared
        .terminals
        .open(spec, move |spec, io| async move {
            // An open terminal keeps the sandbox from idling out, until
            // it ends or is cut off (this future dropped).
            let _running = Running::count(owner.clone());
            bridge::last_message(owner.live.exec(spec, io, None).await)
        })
        .map_err(|e| e.to_string())
}

/// One command counted in `running_execs` while it lives.
struct Running(Arc<Shared>);

impl Running {
    fn count(shared: Arc<Shared>) -> Running {
        shared.running_execs.fetch_add(1, Ordering::Relaxed);
        shared.last_activity_ms.store(now_ms(), Ordering::Relaxed);
        Running(shared)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.last_activity_ms.store(now_ms(), Ordering::Relaxed);
        self.0.running_execs.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `?path=` of a copy, and for one into the guest `&name=` (the
/// archive's top name).
#[derive(serde::Deserialize)]
struct FilesQuery {
    path: String,
    #[serde(default)]
    name: Option<String>,
}

fn refused(e: impl std::fmt::Display) -> axum::response::Response {
    Refusal(axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response()
}

/// Unpacks the request's tar body at `path` in the guest.
async fn put_files(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(query): axum::extract::Query<FilesQuery>,
    body: axum::body::Body,
) -> axum::response::Response {
    shared.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    let target = capsem_proto::ArchiveTarget {
        dest: query.path,
        name: query.name.unwrap_or_default(),
    };
    match shared
        .live
        .channel()
        .put_archive(target, body.into_data_stream())
        .await
    {
        Ok(()) => axum::Json(()).into_response(),
        Err(e) => refused(e),
    }
}

/// Answers with `path` in the guest as a tar stream; a guest that fails
/// half-way cuts the stream (the client sees a broken archive).
async fn get_files(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(query): axum::extract::Query<FilesQuery>,
) -> axum::response::Response {
    use futures::StreamExt;
    shared.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    let chunks = match shared.live.channel().get_archive(&query.path).await {
        Ok(chunks) => chunks,
        Err(e) => return refused(e),
    };
    let mut chunks = Box::pin(chunks);
    // A refusal (no such path) comes first, as an answer of its own.
    let first = match chunks.next().await {
        Some(Err(e)) => return refused(e),
        first => first,
    };
    let rest = futures::stream::iter(first).chain(chunks);
    axum::body::Body::from_stream(rest).into_response()
}

/// Keeps the workspace's changes with the sandbox now.
async fn save_workspace(State(shared): State<Arc<Shared>>) -> Result<axum::Json<()>, Refusal> {
    if shared.live.is_suspended() {
        return Err(conflict("the sandbox is suspended: resume it first"));
    }
    shared
        .live
        .save_changes()
        .await
        .map(axum::Json)
        .map_err(|e| conflict(e.to_string()))
}

/// Writes the VM's state to the sandbox's directory and ends its QEMU.
/// No temporary name is needed: a state is only ever resumed by the
/// supervisor that wrote it, and a new supervisor removes any it finds.
async fn suspend(State(shared): State<Arc<Shared>>) -> Result<axum::Json<()>, Refusal> {
    if shared.live.is_suspended() {
        return Err(conflict("the sandbox is suspended already"));
    }
    let path = shared.dir.suspended_state();
    let file = capsem_core::fsutil::create_private(&path)
        .map_err(|e| internal(format!("creating {}: {e}", path.display())))?;
    let saved = shared.live.suspend(file).await;
    if saved.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    shared.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    saved
        .map(axum::Json)
        .map_err(|e| conflict(format!("suspending: {e}")))
}

/// Starts QEMU again on the suspended state, which is removed once the VM
/// runs.
async fn resume(State(shared): State<Arc<Shared>>) -> Result<axum::Json<()>, Refusal> {
    if !shared.live.is_suspended() {
        return Err(conflict("the sandbox is not suspended"));
    }
    let path = shared.dir.suspended_state();
    let file = std::fs::File::open(&path)
        .map_err(|e| internal(format!("opening {}: {e}", path.display())))?;
    shared
        .live
        .resume(file)
        .await
        .map_err(|e| conflict(format!("resuming: {e}")))?;
    let _ = std::fs::remove_file(&path);
    shared.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    Ok(axum::Json(()))
}

/// A refused request, answered with an [`crate::api::ErrorBody`] so that
/// the service can pass its words on.
struct Refusal(axum::http::StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> axum::response::Response {
        let body = crate::api::ErrorBody { error: self.1 };
        (self.0, axum::Json(body)).into_response()
    }
}

fn conflict(message: impl Into<String>) -> Refusal {
    Refusal(axum::http::StatusCode::CONFLICT, message.into())
}

fn internal(message: String) -> Refusal {
    Refusal(axum::http::StatusCode::INTERNAL_SERVER_ERROR, message)
}

async fn stop(State(shared): State<Arc<Shared>>) -> axum::Json<()> {
    shared.stop.notify_one();
    axum::Json(())
}
