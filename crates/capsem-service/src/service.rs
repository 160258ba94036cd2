//! The service: the API on `capsem.sock`, a router over the sandboxes'
//! supervisors.
//!
//! It keeps no state of its own that matters: a sandbox is its directory,
//! and it runs while its supervisor holds the directory's lock. A service
//! that dies loses nothing; the next one reads the same directories.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use capsem_core::session::store::now_ms;
use capsem_core::settings::Settings;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::api::{
    CreateRequest, ErrorBody, SandboxInfo, ServiceInfo, State as SandboxState, SupervisorInfo,
    UiInfo, UiRequest,
};
use crate::client::Client;
use crate::layout::{self, Meta, SandboxDir};
use crate::{bridge, lock, name, peer, ui};

/// How long a stopping supervisor may take before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(20);
/// How long a supervisor's `/info` may take to answer.
const INFO_WAIT: Duration = Duration::from_secs(3);
/// Added to `vm.boot_timeout_secs` for a supervisor to be ready.
const READY_SLACK: Duration = Duration::from_secs(30);

/// What the service runs with.
pub struct Config {
    /// Capsem's home.
    pub home: PathBuf,
    /// The capsem binary, run as `capsem supervise NAME` for each sandbox.
    pub exe: PathBuf,
}

/// The service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Another service holds the lock.
    #[error("a capsem service is running already")]
    Running,
    /// Its directory, lock or socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: io::Error,
    },
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> ServiceError {
    let what = what.to_owned();
    move |source| ServiceError::Io { what, source }
}

struct Service {
    home: PathBuf,
    exe: PathBuf,
    started_ms: i64,
    /// Serializes lifecycle changes of each sandbox.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Sandboxes whose supervisors are starting: they count against
    /// `sandbox.max_running` before they hold their lock.
    starting: Mutex<std::collections::HashSet<String>>,
    stop: Notify,
    /// The web UI's port and gate, once `POST /v1/ui` started it.
    ui: tokio::sync::Mutex<Option<(u16, Arc<ui::Gate>)>>,
}

/// Serves until `POST /v1/service/stop` or SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<(), ServiceError> {
    let run_dir = layout::run_dir(&config.home);
    layout::private_dir(&run_dir).map_err(io_err("creating the service's directory"))?;
    let _alive = lock::take(&run_dir.join("service.lock"), Duration::from_secs(1))
        .map_err(io_err("locking the service"))?
        .ok_or(ServiceError::Running)?;
    let listener = peer::bind(&layout::service_socket(&config.home))
        .map_err(io_err("binding the service's socket"))?;
    let service = Arc::new(Service {
        home: config.home,
        exe: config.exe,
        started_ms: now_ms(),
        locks: Mutex::default(),
        starting: Mutex::default(),
        stop: Notify::new(),
        ui: tokio::sync::Mutex::default(),
    });
    tracing::info!("capsem service {} serving", std::process::id());
    let shutdown = {
        let service = service.clone();
        async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                () = service.stop.notified() => {}
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
    };
    let socket = layout::service_socket(&service.home);
    let served = peer::serve(listener, router(service), shutdown).await;
    let _ = std::fs::remove_file(socket);
    served.map_err(io_err("serving"))
}

/// The unix socket's routes: the API, and `/v1/ui`, which hands out the
/// UI's token and so is not served to browsers.
fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/ui", post(open_ui))
        .with_state(service.clone())
        .merge(api(service))
}

/// The API, served on the unix socket and to the UI.
fn api(service: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/service", get(service_info))
        .route("/v1/service/stop", post(service_stop))
        .route("/v1/sandboxes", get(list).post(create))
        .route("/v1/sandboxes/{name}", get(show).delete(remove))
        .route("/v1/sandboxes/{name}/start", post(start))
        .route("/v1/sandboxes/{name}/stop", post(stop))
        .route("/v1/sandboxes/{name}/suspend", post(suspend))
        .route("/v1/sandboxes/{name}/resume", post(resume))
        .route("/v1/sandboxes/{name}/exec", get(exec))
        .route("/v1/sandboxes/{name}/terminal", get(terminal))
        .route("/v1/sandboxes/{name}/files", get(files).put(files))
        .route("/v1/sandboxes/{name}/logs", get(logs))
        .route("/v1/sandboxes/{name}/net", get(net))
        .route("/v1/sandboxes/{name}/workspace/save", post(save_workspace))
        .merge(crate::settings::routes(&service.home))
        .merge(crate::sessions::routes(&service.home))
        .with_state(service)
}

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl ApiError {
    fn conflict(message: impl Into<String>) -> Self {
        ApiError(StatusCode::CONFLICT, message.into())
    }

    pub(crate) fn internal(message: impl std::fmt::Display) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.0.is_server_error() {
            tracing::error!("{}: {}", self.0, self.1);
        }
        (self.0, axum::Json(ErrorBody { error: self.1 })).into_response()
    }
}

type Answer<T> = Result<axum::Json<T>, ApiError>;

impl Service {
    fn names(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(layout::root(&self.home)) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| name::check(n).is_ok())
            .collect();
        names.sort();
        names
    }

    /// The sandbox `given` names: its full name, or an unambiguous prefix.
    fn resolve(&self, given: &str) -> Result<SandboxDir, ApiError> {
        let names = self.names();
        if names.iter().any(|n| n == given) {
            return Ok(SandboxDir::of(&self.home, given));
        }
        let matches: Vec<&String> = names.iter().filter(|n| n.starts_with(given)).collect();
        match matches.as_slice() {
            [one] => Ok(SandboxDir::of(&self.home, one)),
            [] => Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no sandbox is named {given:?} (capsem ls lists them)"),
            )),
            many => Err(ApiError::conflict(format!(
                "{given:?} is ambiguous: it begins {}",
                many.iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    fn lock_of(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(name.to_owned()).or_default().clone()
    }

    /// The sandbox `given` names, its lifecycle lock held (start, stop,
    /// suspend, resume and removal take turns) until the guard drops.
    async fn locked(
        &self,
        given: &str,
    ) -> Result<(SandboxDir, tokio::sync::OwnedMutexGuard<()>), ApiError> {
        let dir = self.resolve(given)?;
        let held = self.lock_of(dir.name()).lock_owned().await;
        Ok((dir, held))
    }

    /// The sandboxes whose supervisors hold their locks.
    fn running(&self) -> std::collections::HashSet<String> {
        self.names()
            .into_iter()
            .filter(|n| lock::is_held(&SandboxDir::of(&self.home, n).lock()))
            .collect()
    }

    /// Counts `name` as starting, unless that would make more than
    /// `limit` sandboxes run or start at once.
    fn reserve(&self, name: &str, limit: usize) -> Result<(), ApiError> {
        let mut starting = self
            .starting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.running().union(&starting).count() >= limit {
            return Err(ApiError::conflict(format!(
                "{limit} sandboxes are running, as many as sandbox.max_running allows: stop one first"
            )));
        }
        starting.insert(name.to_owned());
        Ok(())
    }

    async fn info(&self, dir: &SandboxDir) -> Result<SandboxInfo, ApiError> {
        let meta = dir.meta().map_err(|e| {
            ApiError::internal(format!("reading {}: {e}", dir.meta_path().display()))
        })?;
        let running = lock::is_held(&dir.lock());
        let live = if running {
            supervisor_info(dir).await
        } else {
            None
        };
        let rss = live
            .as_ref()
            .map(|live| rss_kib(live.pid) + live.vm_pid.map_or(0, rss_kib));
        Ok(SandboxInfo {
            name: meta.name,
            state: match &live {
                Some(live) if live.suspended => SandboxState::Suspended,
                Some(_) => SandboxState::Running,
                None if running => SandboxState::Starting,
                None => SandboxState::Stopped,
            },
            created_ms: meta.created_ms,
            started_ms: live.as_ref().map(|l| l.started_ms),
            cpus: meta.cpus,
            memory_mib: meta.memory_mib,
            disk_gib: meta.disk_gib,
            session: live
                .as_ref()
                .map(|l| l.session.clone())
                .or_else(|| dir.last_session()),
            host_rss_kib: rss,
            last_activity_ms: live.map(|l| l.last_activity_ms),
        })
    }

    /// Starts the supervisor of `dir` and waits until its VM is ready.
    async fn boot(&self, dir: &SandboxDir, settings: &Settings) -> Result<(), ApiError> {
        self.reserve(dir.name(), settings.sandbox().max_running as usize)?;
        let booted = self.spawn_and_wait(dir, settings).await;
        self.starting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(dir.name());
        booted
    }

    async fn spawn_and_wait(&self, dir: &SandboxDir, settings: &Settings) -> Result<(), ApiError> {
        let mut child = spawn_supervisor(&self.exe, dir)
            .map_err(|e| ApiError::internal(format!("starting the sandbox's supervisor: {e}")))?;
        let wait = Duration::from_secs(settings.vm().boot_timeout_secs.into()) + READY_SLACK;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if supervisor_info(dir).await.is_some() {
                // Reaped when it ends; a service that dies first leaves it
                // to init.
                tokio::spawn(async move { child.wait().await });
                return Ok(());
            }
            let ended = child.try_wait().map_err(ApiError::internal)?;
            if ended.is_some() || tokio::time::Instant::now() > deadline {
                if ended.is_none() {
                    let _ = child.kill().await;
                }
                return Err(ApiError::internal(format!(
                    "the sandbox did not start; {}:\n{}",
                    dir.log().display(),
                    capsem_core::session::log_tail(&dir.log(), 12)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the supervisor of `dir`: asks it, then kills it past
    /// [`STOP_WAIT`]; returns once its process is gone.
    async fn halt(&self, dir: &SandboxDir) -> Result<(), ApiError> {
        let info = supervisor_info(dir).await;
        let asked = Client::new(dir.socket())
            .call::<()>(hyper::Method::POST, "/stop", None::<&()>)
            .await;
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        while lock::is_held(&dir.lock()) {
            if (tokio::time::Instant::now() > deadline || asked.is_err())
                && let Some(info) = &info
            {
                // Its QEMU dies with it (the death signal).
                let pid = nix::unistd::Pid::from_raw(info.pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if tokio::time::Instant::now() > deadline + STOP_WAIT {
                return Err(ApiError::internal("the sandbox's supervisor would not end"));
            }
        }
        Ok(())
    }
}

async fn supervisor_info(dir: &SandboxDir) -> Option<SupervisorInfo> {
    let client = Client::new(dir.socket());
    tokio::time::timeout(INFO_WAIT, client.get::<SupervisorInfo>("/info"))
        .await
        .ok()?
        .ok()
}

/// A process's resident memory, from `/proc`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn load_settings() -> Result<Settings, ApiError> {
    Settings::load().map_err(|e| ApiError::internal(format!("the settings cannot be read: {e}")))
}

/// `capsem supervise NAME`, in a process group of its own (a terminal's
/// signals do not reach it), its output appended to the sandbox's log.
fn spawn_supervisor(exe: &Path, dir: &SandboxDir) -> io::Result<tokio::process::Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.log())?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("supervise")
        .arg(dir.name())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    tokio::process::Command::from(cmd).spawn()
}

/// Makes the disk: a sparse file of `gib`, formatted ext4 with `mkfs.ext4`
/// (the host only writes an empty file system; it never reads the
/// guest's).
async fn make_disk(path: &Path, gib: u32) -> Result<(), ApiError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|f| f.set_len(u64::from(gib) << 30))
        .map_err(|e| ApiError::internal(format!("creating {}: {e}", path.display())));
    file?;
    let mkfs = find_mkfs().ok_or_else(|| {
        ApiError::internal("mkfs.ext4 was not found: install the Debian package e2fsprogs")
    })?;
    let out = tokio::process::Command::new(mkfs)
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "root_owner=0:0",
            "-L",
            "capsem-home",
        ])
        .arg(path)
        .output()
        .await
        .map_err(|e| ApiError::internal(format!("running mkfs.ext4: {e}")))?;
    if !out.status.success() {
        return Err(ApiError::internal(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn find_mkfs() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("mkfs.ext4"))
        .find(|p| p.is_file())
}

async fn service_info(State(service): State<Arc<Service>>) -> axum::Json<ServiceInfo> {
    axum::Json(ServiceInfo {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_ms: service.started_ms,
        sandboxes: service.names().len() as u32,
        running: service.running().len() as u32,
    })
}

async fn service_stop(State(service): State<Arc<Service>>) -> axum::Json<()> {
    service.stop.notify_one();
    axum::Json(())
}

/// `POST /v1/ui`: serves the UI on 127.0.0.1 (once; later calls say where).
async fn open_ui(
    State(service): State<Arc<Service>>,
    axum::Json(req): axum::Json<UiRequest>,
) -> Answer<UiInfo> {
    if !ui::bundled() {
        return Err(ApiError::internal(
            "this capsem was built without its web UI: build it with `cargo xtask build-ui`, then rebuild capsem",
        ));
    }
    let mut served = service.ui.lock().await;
    let (port, gate) = match &*served {
        Some((port, _)) if req.port.is_some_and(|wanted| wanted != *port) => {
            return Err(ApiError::conflict(format!(
                "the UI is served on port {port} already; to move it: capsem service stop, then capsem ui --port {}",
                req.port.unwrap_or(*port)
            )));
        }
        Some(running) => running.clone(),
        None => {
            let port = match req.port {
                Some(port) => port,
                None => load_settings()?.ui().port,
            };
            let gate = serve_ui(&service, port).await?;
            served.insert((port, gate)).clone()
        }
    };
    let url = format!("http://127.0.0.1:{port}/");
    Ok(axum::Json(UiInfo {
        login_url: gate.sign_in_url(),
        url,
    }))
}

/// Binds 127.0.0.1:`port` and serves the UI there for the service's life,
/// with a token of its own.
async fn serve_ui(service: &Arc<Service>, port: u16) -> Result<Arc<ui::Gate>, ApiError> {
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => ApiError::conflict(format!(
                "port {port} of 127.0.0.1 is in use (another program, or another user's capsem): \
                 choose another with capsem ui --port N or capsem settings set ui.port N"
            )),
            _ => ApiError::internal(format!("listening on 127.0.0.1:{port}: {e}")),
        })?;
    let token_path = layout::run_dir(&service.home).join("ui.token");
    let token = ui::Token::make(&token_path)
        .map_err(|e| ApiError::internal(format!("{}: {e}", token_path.display())))?;
    let gate = Arc::new(ui::Gate::new(port, token));
    let router = ui::router(api(service.clone()), gate.clone());
    tracing::info!("serving the UI on http://127.0.0.1:{port}/");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!("the UI's server failed: {e}");
        }
    });
    Ok(gate)
}

async fn list(State(service): State<Arc<Service>>) -> Answer<Vec<SandboxInfo>> {
    let dirs: Vec<SandboxDir> = service
        .names()
        .iter()
        .map(|name| SandboxDir::of(&service.home, name))
        .collect();
    // One slow supervisor does not hold up the others' answers.
    let infos = futures::future::join_all(dirs.iter().map(|dir| service.info(dir))).await;
    // A directory half made by a create that failed has no metadata.
    Ok(axum::Json(infos.into_iter().flatten().collect()))
}

async fn show(
    State(service): State<Arc<Service>>,
    UrlPath(given): UrlPath<String>,
) -> Answer<SandboxInfo> {
    let dir = service.resolve(&given)?;
    service.info(&dir).await.map(axum::Json)
}

async fn create(
    State(service): State<Arc<Service>>,
    axum::Json(req): axum::Json<CreateRequest>,
) -> Result<(StatusCode, axum::Json<SandboxInfo>), ApiError> {
    let settings = load_settings()?;
    let name = match req.name {
        Some(name) => {
            name::check(&name).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
            name
        }
        None => name::generate(|n| SandboxDir::of(&service.home, n).path().exists()),
    };
    for (key, _) in &req.env {
        capsem_proto::validate_env_name(key)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    }
    let vm = settings.vm();
    let workspace = match &req.workspace {
        Some(dir) => Some(checked_workspace(dir, &service.home)?.root),
        None => None,
    };
    let meta = Meta {
        name: name.clone(),
        created_ms: now_ms(),
        cpus: req.cpus.unwrap_or(vm.cpus),
        memory_mib: req.memory_mib.unwrap_or(vm.memory_mib),
        disk_gib: settings.sandbox().disk_gib,
        env: req.env,
        workspace,
    };
    capsem_core::settings::check_vm_shape(meta.cpus, meta.memory_mib)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let lock = service.lock_of(&name);
    let _held = lock.lock().await;
    let dir = SandboxDir::of(&service.home, &name);
    match dir.create() {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(ApiError::conflict(format!(
                "a sandbox named {name:?} exists"
            )));
        }
        Err(e) => {
            return Err(ApiError::internal(format!(
                "creating {}: {e}",
                dir.path().display()
            )));
        }
    }
    let made = async {
        dir.write_meta(&meta).map_err(|e| {
            ApiError::internal(format!("writing {}: {e}", dir.meta_path().display()))
        })?;
        make_disk(&dir.disk(), meta.disk_gib).await?;
        service.boot(&dir, &settings).await
    };
    if let Err(e) = made.await {
        let _ = std::fs::remove_dir_all(dir.path());
        return Err(e);
    }
    Ok((StatusCode::CREATED, axum::Json(service.info(&dir).await?)))
}

/// A workspace directory a request names, refused as `capsem run -w`
/// refuses it.
fn checked_workspace(
    dir: &Path,
    home: &Path,
) -> Result<capsem_core::workspace::Workspace, ApiError> {
    if !dir.is_absolute() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("the workspace {} is not an absolute path", dir.display()),
        ));
    }
    let user_home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    capsem_core::workspace::choose(Some(dir), false, dir, user_home.as_deref(), home)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "no workspace".into()))
}

async fn start(
    State(service): State<Arc<Service>>,
    UrlPath(given): UrlPath<String>,
) -> Answer<SandboxInfo> {
    let (dir, _held) = service.locked(&given).await?;
    if !lock::is_held(&dir.lock()) {
        service.boot(&dir, &load_settings()?).await?;
    } else if supervisor_info(&dir).await.is_some_and(|i| i.suspended) {
        ask(&dir, "/resume").await?;
    }
    service.info(&dir).await.map(axum::Json)
}

/// Writes a running sandbox's memory to its directory and ends its QEMU;
/// its supervisor, and every client's connection, wait for the resume.
async fn suspend(
    State(service): State<Arc<Service>>,
    UrlPath(given): UrlPath<String>,
) -> Answer<SandboxInfo> {
    let dir = running(&service, &given).await?;
    let _held = service.lock_of(dir.name()).lock_owned().await;
    ask(&dir, "/suspend").await?;
    service.info(&dir).await.map(axum::Json)
}

/// Continues a suspended sandbox where it was.
async fn resume(
    State(service): State<Arc<Service>>,
    UrlPath(given): UrlPath<String>,
) -> Answer<SandboxInfo> {
    let (dir, _held) = service.locked(&given).await?;
    if !supervisor_info(&dir).await.is_some_and(|i| i.suspended) {
        return Err(ApiError::conflict(format!(
            "sandbox {:?} is not suspended",
            dir.name()
        )));
    }
    ask(&dir, "/resume").await?;
    service.info(&dir).await.map(axum::Json)
}

/// Posts to the supervisor of `dir`; its refusal is a conflict.
async fn ask(dir: &SandboxDir, path: &str) -> Result<(), ApiError> {
    Client::new(dir.socket())
        .call::<()>(hyper::Method::POST, path, None::<&()>)
        .await
        .map_err(|e| match e.status() {
            Some(_) => ApiError::conflict(e.to_string()),
            None => ApiError::internal(format!("the sandbox's supervisor does not answer: {e}")),
        })
}

async fn stop(
    State(service): State<Arc<Service>>,
    UrlPath(given): UrlPath<String>,
) -> Answer<SandboxInfo> {
    let (dir, _held) = service.locked(&given).await?;
    if lock::is_held(&dir.lock()) {
        service.halt(&dir).await?;
    }
    service.info(&dir).await.map(axum::Json)
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn remove(
    State(service): State<Arc<Service>>,
    UrlPath(given): UrlPath<String>,
    Query(query): Query<RemoveQuery>,
) -> Answer<()> {
    let (dir, _held) = service.locked(&given).await?;
    if lock::is_held(&dir.lock()) {
        if !query.force {
            return Err(ApiError::conflict(format!(
                "sandbox {given:?} is running: stop it first, or remove it with -f"
            )));
        }
        service.halt(&dir).await?;
    }
    std::fs::remove_dir_all(dir.path())
        .map_err(|e| ApiError::internal(format!("removing {}: {e}", dir.path().display())))?;
    Ok(axum::Json(()))
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

/// The boot log and the commands of the current or last boot.
async fn logs(
    State(service): State<Arc<Service>>,
    UrlPath(given): UrlPath<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let dir = service.resolve(&given)?;
    let stream = crate::logs::stream(&service.home, dir, query.follow);
    streamed(stream, &given, "text/plain; charset=utf-8")
}

async fn net(
    State(service): State<Arc<Service>>,
    UrlPath(given): UrlPath<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let dir = service.resolve(&given)?;
    let stream = crate::net::stream(&service.home, dir, query.follow);
    streamed(stream, &given, "application/x-ndjson")
}

/// The answer of a record of `given`'s boot, `None` when it never booted.
fn streamed<S>(stream: Option<S>, given: &str, content_type: &str) -> Result<Response, ApiError>
where
    S: futures::Stream<Item = Result<bytes::Bytes, io::Error>> + Send + 'static,
{
    let stream = stream.ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("sandbox {given:?} has no boot to show"),
        )
    })?;
    Response::builder()
        .header("content-type", content_type)
        .body(axum::body::Body::from_stream(stream))
        .map_err(ApiError::internal)
}

/// Copies: streamed to and from the sandbox's supervisor as they are.
async fn files(
    State(service): State<Arc<Service>>,
    UrlPath(given): UrlPath<String>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let dir = running(&service, &given).await?;
    let (parts, body) = request.into_parts();
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let content_type = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let answer = Client::new(dir.socket())
        .stream(
            parts.method.clone(),
            &format!("/files{query}"),
            content_type,
            body,
        )
        .await
        .map_err(|e| match e.status() {
            Some(status) => ApiError(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                e.to_string(),
            ),
            None => ApiError::internal(format!("the sandbox's supervisor does not answer: {e}")),
        })?;
    Ok(answer.map(axum::body::Body::new))
}

/// Keeps a running sandbox's workspace changes with it now (a stopped
/// sandbox kept them when it stopped).
async fn save_workspace(
    State(service): State<Arc<Service>>,
    UrlPath(given): UrlPath<String>,
) -> Answer<()> {
    let dir = service.resolve(&given)?;
    if !lock::is_held(&dir.lock()) {
        return Ok(axum::Json(()));
    }
    ask(&dir, "/workspace/save").await.map(axum::Json)
}

/// The sandbox `given` names, which must be running (not stopped, not
/// suspended).
async fn running(service: &Service, given: &str) -> Result<SandboxDir, ApiError> {
    let dir = service.resolve(given)?;
    let name = dir.name().to_owned();
    if !lock::is_held(&dir.lock()) {
        return Err(ApiError::conflict(format!(
            "sandbox {name:?} is stopped: start it with `capsem start {name}`"
        )));
    }
    match supervisor_info(&dir).await {
        Some(info) if info.suspended => Err(ApiError::conflict(format!(
            "sandbox {name:?} is suspended: continue it with `capsem resume {name}`"
        ))),
        Some(_) => Ok(dir),
        None => Err(ApiError::conflict(format!(
            "sandbox {name:?} is starting: it takes commands once `capsem ls` shows it running"
        ))),
    }
}

async fn exec(
    State(service): State<Arc<Service>>,
    UrlPath(given): UrlPath<String>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    relayed(&service, &given, "/exec", upgrade).await
}

#[derive(Deserialize)]
struct TerminalQuery {
    id: Option<u32>,
}

/// A terminal that outlives its client (`crate::terminals`): a new one,
/// or `?id=` one to attach to again.
async fn terminal(
    State(service): State<Arc<Service>>,
    UrlPath(given): UrlPath<String>,
    Query(query): Query<TerminalQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let path = match query.id {
        Some(id) => format!("/terminal?id={id}"),
        None => "/terminal".to_owned(),
    };
    relayed(&service, &given, &path, upgrade).await
}

/// A client's WebSocket carried to the supervisor's `path`.
async fn relayed(
    service: &Service,
    given: &str,
    path: &str,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let dir = running(service, given).await?;
    let upstream = Client::new(dir.socket())
        .websocket(path)
        .await
        .map_err(|e| {
            ApiError::internal(format!("the sandbox's supervisor does not answer: {e}"))
        })?;
    let upgrade = upgrade
        .max_message_size(bridge::MAX_MESSAGE_BYTES)
        .max_frame_size(bridge::MAX_MESSAGE_BYTES);
    Ok(upgrade.on_upgrade(move |client| bridge::relay(client, upstream)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn router_in(home: &Path) -> Router {
        router(Arc::new(Service {
            home: home.to_path_buf(),
            exe: PathBuf::from("/bin/false"),
            started_ms: 0,
            locks: Mutex::default(),
            starting: Mutex::default(),
            stop: Notify::new(),
            ui: tokio::sync::Mutex::default(),
        }))
    }

    /// A stopped sandbox on disk, as a create leaves one.
    fn sandbox(home: &Path, name: &str) {
        let dir = SandboxDir::of(home, name);
        let _ = std::fs::remove_dir_all(dir.path());
        dir.create().unwrap();
        dir.write_meta(&Meta {
            name: name.into(),
            created_ms: 1,
            cpus: 1,
            memory_mib: 256,
            disk_gib: 1,
            env: Vec::new(),
            workspace: None,
        })
        .unwrap();
    }

    async fn call(router: &Router, method: &str, uri: &str) -> (StatusCode, String) {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from("not json"))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn the_openapi_description_lists_exactly_the_routes_served() {
        let spec: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/openapi.json")).unwrap();
        let home = tempfile::tempdir().unwrap();
        let router = router_in(home.path());
        let paths = spec["paths"].as_object().unwrap();
        for (path, item) in paths {
            for method in ["get", "post", "put", "delete"] {
                sandbox(home.path(), "web");
                let uri = path.replace("{name}", "web") + "?path=/root/x&name=x";
                let (status, body) = call(&router, &method.to_uppercase(), &uri).await;
                if item.get(method).is_some() {
                    // A handler's own 404 says what is missing; the
                    // router's has no body.
                    let served = status != StatusCode::METHOD_NOT_ALLOWED
                        && (status != StatusCode::NOT_FOUND || !body.is_empty());
                    assert!(served, "{method} {path}: {status} {body}");
                } else {
                    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                }
            }
        }
        for unlisted in ["/v1/nothing", "/v1/sandboxes/web/nothing", "/sandboxes"] {
            let (status, body) = call(&router, "GET", unlisted).await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::NOT_FOUND, ""),
                "{unlisted}"
            );
        }
    }

    #[tokio::test]
    async fn names_resolve_by_unambiguous_prefix_and_errors_say_why() {
        let home = tempfile::tempdir().unwrap();
        let router = router_in(home.path());
        sandbox(home.path(), "web-a");
        sandbox(home.path(), "web-b");
        let (status, body) = call(&router, "GET", "/v1/sandboxes/web").await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(
            body.contains("ambiguous") && body.contains("web-a, web-b"),
            "{body}"
        );
        let (status, body) = call(&router, "GET", "/v1/sandboxes/web-a").await;
        assert_eq!(status, StatusCode::OK);
        let info: SandboxInfo = serde_json::from_str(&body).unwrap();
        assert_eq!(info.state, SandboxState::Stopped);
        let (status, body) = call(&router, "GET", "/v1/sandboxes/zzz").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("no sandbox is named"), "{body}");
        let (status, body) = call(&router, "POST", "/v1/sandboxes/web-a/stop").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = call(&router, "GET", "/v1/sandboxes/web-b/exec").await;
        assert_ne!(status, StatusCode::OK, "{body}");
        // A directory whose name could never be a sandbox is not listed.
        std::fs::create_dir_all(layout::root(home.path()).join("Not.A.Name")).unwrap();
        let (_, body) = call(&router, "GET", "/v1/sandboxes").await;
        let all: Vec<SandboxInfo> = serde_json::from_str(&body).unwrap();
        assert_eq!(all.len(), 2);
    }

    #[tokio::test]
    async fn a_create_with_a_bad_name_or_unknown_fields_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let router = router_in(home.path());
        for body in [
            r#"{"name":"../etc"}"#,
            r#"{"name":"UPPER"}"#,
            r#"{"nmae":"typo"}"#,
            r#"{"cpus":0}"#,
        ] {
            let request = axum::http::Request::builder()
                .method("POST")
                .uri("/v1/sandboxes")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            assert!(
                response.status().is_client_error(),
                "{body}: {}",
                response.status()
            );
        }
        assert!(
            !layout::root(home.path()).exists()
                || std::fs::read_dir(layout::root(home.path()))
                    .unwrap()
                    .next()
                    .is_none()
        );
    }
}
