//! E2B's control plane: create, list, inspect, time out and kill sandboxes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use capsem_core::settings::Source;
use capsem_service::api::{CreateRequest, SandboxInfo, State as VmState};
use capsem_service::ui::random_hex;
use hyper::Method;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use super::process::Table;
use super::{ApiError, ENVD_VERSION, Server, call, route};
use crate::cmd::run::load_settings;

/// The one template: capsem's rootfs.
const TEMPLATE: &str = "base";
/// E2B's default time to live, when a request gives none.
const DEFAULT_TIMEOUT_SECS: u64 = 15;
/// The longest time to live (E2B's own limit for its largest plans).
const MAX_TIMEOUT_SECS: u64 = 24 * 3600;
/// Metadata bounds: entries, and bytes of a key or a value.
const MAX_METADATA: usize = 64;
const MAX_METADATA_BYTES: usize = 1024;

/// An E2B sandbox: a capsem sandbox and what E2B adds to it.
pub struct Sandbox {
    pub id: String,
    /// The capsem sandbox's name.
    pub name: String,
    /// What envd calls must send as `X-Access-Token`.
    pub token: String,
    metadata: BTreeMap<String, String>,
    started: Timestamp,
    /// When it is killed; the watcher task waits on it.
    end: watch::Sender<Timestamp>,
    cpus: u32,
    memory_mib: u32,
    disk_gib: u32,
    /// Its started commands.
    pub processes: Table,
}

impl Sandbox {
    /// Deletes its capsem sandbox (one already gone counts as deleted).
    pub async fn kill(&self) -> Result<(), ApiError> {
        let path = format!("{}?force=true", route(&self.name, ""));
        match call::<()>(Method::DELETE, &path, None::<&()>).await {
            Err(ApiError(StatusCode::NOT_FOUND, _)) => Ok(()),
            other => other,
        }
    }

    /// Moves its end to `secs` from now (at most [`MAX_TIMEOUT_SECS`]).
    fn expire_in(&self, secs: u64) {
        let secs = secs.min(MAX_TIMEOUT_SECS);
        let end = Timestamp::now() + Duration::from_secs(secs);
        self.end.send_replace(end);
    }

    fn expired(&self) -> bool {
        *self.end.borrow() <= Timestamp::now()
    }

    /// A sandbox with no VM behind it, for the gates' tests.
    #[cfg(test)]
    pub fn unbacked(id: &str, token: &str) -> Arc<Sandbox> {
        let (end, _) = watch::channel(Timestamp::now());
        Arc::new(Sandbox {
            id: id.into(),
            name: format!("e2b-{id}"),
            token: token.into(),
            metadata: BTreeMap::new(),
            started: Timestamp::now(),
            end,
            cpus: 1,
            memory_mib: 512,
            disk_gib: 1,
            processes: Table::default(),
        })
    }
}

pub fn routes() -> Router<Arc<Server>> {
    Router::new()
        .route("/sandboxes", post(create).get(list))
        .route("/v2/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(show).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
}

/// `NewSandbox` of E2B's API; the options capsem cannot honour are
/// refused by [`check`], and so is any field it does not know.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: String,
    timeout: Option<u64>,
    auto_pause: Option<bool>,
    auto_pause_memory: Option<bool>,
    auto_resume: Option<Value>,
    /// Taken and not needed: every envd call takes its token, asked or not.
    #[serde(rename = "secure")]
    _secure: Option<bool>,
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    network: Option<Value>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    env_vars: BTreeMap<String, String>,
    mcp: Option<Value>,
    iam: Option<Value>,
    #[serde(default)]
    volume_mounts: Vec<Value>,
}

/// What a created (or connected) sandbox answers: E2B's `Sandbox`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    #[serde(rename = "templateID")]
    template_id: &'static str,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    alias: &'static str,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    envd_version: &'static str,
    envd_access_token: String,
    domain: Option<String>,
    traffic_access_token: Option<String>,
}

/// E2B's `ListedSandbox` and (with the token) `SandboxDetail`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    #[serde(rename = "templateID")]
    template_id: &'static str,
    alias: &'static str,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    started_at: String,
    end_at: String,
    #[serde(rename = "cpuCount")]
    cpu_count: u32,
    #[serde(rename = "memoryMB")]
    memory_mb: u32,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: u64,
    metadata: BTreeMap<String, String>,
    state: &'static str,
    envd_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    envd_access_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Timeout {
    timeout: u64,
}

/// A time to live within E2B's bounds.
fn check_timeout(secs: u64) -> Result<u64, ApiError> {
    if secs > MAX_TIMEOUT_SECS {
        return Err(ApiError::bad(format!(
            "timeout is at most {MAX_TIMEOUT_SECS} seconds (24 hours)"
        )));
    }
    Ok(secs)
}

/// The query of `GET /v2/sandboxes`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    /// `running`, `paused`, or both comma-separated.
    state: Option<String>,
    /// `key=value&key2=value2`, URL-encoded once more.
    metadata: Option<String>,
    /// At most this many; one page holds them all (no next token).
    limit: Option<usize>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("a bad request body: {e}")))
}

async fn create(State(server): State<Arc<Server>>, body: Bytes) -> Result<Response, ApiError> {
    let new: NewSandbox = parse(&body)?;
    check(&new)?;
    // Made to the end even when the client goes away meanwhile: a VM made
    // and not tracked would have no timeout and no owner.
    let made = tokio::spawn(make(server, new)).await;
    let sandbox =
        made.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok((StatusCode::CREATED, axum::Json(created(&sandbox))).into_response())
}

/// Creates the capsem sandbox of `new`, tracked and timed.
async fn make(server: Arc<Server>, new: NewSandbox) -> Result<Arc<Sandbox>, ApiError> {
    let id = new_id();
    let request = CreateRequest {
        name: Some(format!("e2b-{id}")),
        env: new.env_vars.into_iter().collect(),
        ..CreateRequest::default()
    };
    let info: SandboxInfo = call(Method::POST, "/v1/sandboxes", Some(&request)).await?;
    let (end, ends) = watch::channel(Timestamp::now());
    let sandbox = Arc::new(Sandbox {
        token: random_hex(),
        name: info.name.clone(),
        metadata: new.metadata,
        started: Timestamp::now(),
        end,
        cpus: info.cpus,
        memory_mib: info.memory_mib,
        disk_gib: info.disk_gib,
        processes: Table::default(),
        id: id.clone(),
    });
    sandbox.expire_in(new.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS));
    if !server.track(sandbox.clone()) {
        // The server is stopping: nobody would own it.
        sandbox.kill().await?;
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "capsem e2b is stopping".into(),
        ));
    }
    tokio::spawn(expire(server, id, ends));
    tracing::info!(sandbox = %sandbox.name, "created for an E2B client");
    Ok(sandbox)
}

fn created(sandbox: &Sandbox) -> Created {
    Created {
        template_id: TEMPLATE,
        sandbox_id: sandbox.id.clone(),
        alias: TEMPLATE,
        client_id: "capsem",
        envd_version: ENVD_VERSION,
        envd_access_token: sandbox.token.clone(),
        domain: None,
        traffic_access_token: None,
    }
}

/// Refuses what capsem cannot do as asked, in words that say what it does.
fn check(new: &NewSandbox) -> Result<(), ApiError> {
    if new.template_id != TEMPLATE {
        return Err(ApiError::bad(format!(
            "capsem has one template, \"{TEMPLATE}\" (its hardened rootfs); \"{}\" is not one",
            new.template_id
        )));
    }
    let present = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    let refused = [
        (
            new.auto_pause == Some(true),
            "autoPause (capsem kills a sandbox at its timeout)",
        ),
        (present(&new.auto_resume), "autoResume"),
        (new.auto_pause_memory == Some(false), "autoPauseMemory"),
        (
            present(&new.mcp),
            "mcp (run `capsem mcp` on the host instead)",
        ),
        (present(&new.iam), "iam"),
        (!new.volume_mounts.is_empty(), "volumeMounts"),
        (
            present(&new.network) && new.network != Some(Value::Object(Default::default())),
            "network rules (capsem's network follows the host's policy: `capsem settings`, docs/network.md)",
        ),
    ];
    if let Some((_, what)) = refused.iter().find(|(asked, _)| *asked) {
        return Err(ApiError::bad(format!(
            "capsem's E2B API does not honour {what}; leave it unset"
        )));
    }
    internet(new.allow_internet_access)?;
    let too_long = |s: &String| s.len() > MAX_METADATA_BYTES;
    if new.metadata.len() > MAX_METADATA
        || new.metadata.iter().any(|(k, v)| too_long(k) || too_long(v))
    {
        return Err(ApiError::bad(format!(
            "metadata takes at most {MAX_METADATA} entries of at most {MAX_METADATA_BYTES} bytes each"
        )));
    }
    new.timeout.map(check_timeout).transpose()?;
    Ok(())
}

/// `allow_internet_access`: capsem's network is the host's policy, for
/// every sandbox alike. Unset takes it as it is; `true` is honoured only
/// when the policy lets unlisted names through; `false` is refused (one
/// sandbox cannot be cut off alone).
fn internet(asked: Option<bool>) -> Result<(), ApiError> {
    match asked {
        None => Ok(()),
        Some(false) => Err(ApiError::bad(
            "capsem cannot cut one sandbox off the network: every sandbox's network is the host's policy (`capsem settings get network.default_action`); leave allow_internet_access unset",
        )),
        Some(true) => {
            let settings = load_settings()
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let entry = settings.entry("network.default_action");
            if settings.text("network.default_action") == "allow" {
                return Ok(());
            }
            let why = match entry.source {
                Source::Corp => "locked to deny by the corporate settings file".to_owned(),
                _ => "deny: names not on network.allow are refused; `capsem settings set network.default_action allow` opens it".to_owned(),
            };
            Err(ApiError::bad(format!(
                "allow_internet_access=true asks for the open internet, but capsem's network.default_action is {why}; leave allow_internet_access unset to run under the policy"
            )))
        }
    }
}

/// 20 lowercase letters and digits, like E2B's ids.
fn new_id() -> String {
    use rand::RngExt;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Kills the sandbox `id` when its end comes (moved by `set_timeout`).
async fn expire(server: Arc<Server>, id: String, mut ends: watch::Receiver<Timestamp>) {
    let sandbox = loop {
        let end = *ends.borrow_and_update();
        let left = end.duration_since(Timestamp::now());
        let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
        tokio::select! {
            () = tokio::time::sleep(left) => {
                // Taken out under the lock only if still due: a timeout
                // set meanwhile wins.
                let mut sandboxes = server.lock();
                if sandboxes.get(&id).is_some_and(|s| s.expired()) {
                    break sandboxes.remove(&id);
                }
            }
            changed = ends.changed() => if changed.is_err() { return },
        }
    };
    if let Some(sandbox) = sandbox {
        tracing::info!(sandbox = %sandbox.name, "its E2B timeout passed: killing it");
        if let Err(ApiError(_, e)) = sandbox.kill().await {
            tracing::warn!(sandbox = %sandbox.name, "deleting it failed: {e}");
        }
    }
}

async fn list(
    State(server): State<Arc<Server>>,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<Vec<Listed>>, ApiError> {
    let states = states().await?;
    let wanted = match query.metadata.as_deref() {
        Some(filter) => wanted_metadata(filter)?,
        None => Vec::new(),
    };
    let mut sandboxes: Vec<Arc<Sandbox>> = server.lock().values().cloned().collect();
    sandboxes.sort_by_key(|s| s.started);
    let listed = sandboxes
        .iter()
        .filter(|s| wanted.iter().all(|(k, v)| s.metadata.get(k) == Some(v)))
        .filter_map(|s| Some(listed(s, *states.get(&s.name)?, false)))
        .filter(|l| {
            query
                .state
                .as_deref()
                .is_none_or(|st| st.split(',').any(|st| st == l.state))
        })
        .take(query.limit.unwrap_or(usize::MAX))
        .collect();
    Ok(axum::Json(listed))
}

/// `key=value&...` of the `metadata` query.
fn wanted_metadata(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad(format!("a bad metadata filter {query:?}: {e}")))
}

/// Each capsem sandbox's state, by name.
async fn states() -> Result<HashMap<String, VmState>, ApiError> {
    let all: Vec<SandboxInfo> = call(Method::GET, "/v1/sandboxes", None::<&()>).await?;
    Ok(all.into_iter().map(|s| (s.name, s.state)).collect())
}

fn listed(sandbox: &Sandbox, state: VmState, with_token: bool) -> Listed {
    Listed {
        template_id: TEMPLATE,
        alias: TEMPLATE,
        sandbox_id: sandbox.id.clone(),
        client_id: "capsem",
        started_at: sandbox.started.to_string(),
        end_at: sandbox.end.borrow().to_string(),
        cpu_count: sandbox.cpus,
        memory_mb: sandbox.memory_mib,
        disk_size_mb: u64::from(sandbox.disk_gib) * 1024,
        metadata: sandbox.metadata.clone(),
        state: match state {
            VmState::Starting | VmState::Running => "running",
            VmState::Suspended | VmState::Stopped => "paused",
        },
        envd_version: ENVD_VERSION,
        envd_access_token: with_token.then(|| sandbox.token.clone()),
    }
}

fn unknown(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("sandbox {id} not found"))
}

/// The sandbox `id`; one whose capsem sandbox was deleted under it is
/// forgotten.
async fn find(server: &Server, id: &str) -> Result<(Arc<Sandbox>, VmState), ApiError> {
    let sandbox = server.sandbox(id).ok_or_else(|| unknown(id))?;
    match states().await?.get(&sandbox.name) {
        Some(state) => Ok((sandbox, *state)),
        None => {
            server.lock().remove(id);
            Err(unknown(id))
        }
    }
}

async fn show(
    State(server): State<Arc<Server>>,
    Path(id): Path<String>,
) -> Result<axum::Json<Listed>, ApiError> {
    let (sandbox, state) = find(&server, &id).await?;
    Ok(axum::Json(listed(&sandbox, state, true)))
}

async fn kill(
    State(server): State<Arc<Server>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let sandbox = server.lock().remove(&id).ok_or_else(|| unknown(&id))?;
    // Done to the end even when the client goes away; a sandbox that
    // could not be deleted is tracked again, its timeout still on.
    let killed = tokio::spawn(async move {
        let killed = sandbox.kill().await;
        if killed.is_err() {
            server.track(sandbox);
        }
        killed
    })
    .await;
    killed.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_timeout(
    State(server): State<Arc<Server>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let Timeout { timeout } = parse(&body)?;
    let timeout = check_timeout(timeout)?;
    let sandbox = server.sandbox(&id).ok_or_else(|| unknown(&id))?;
    sandbox.expire_in(timeout);
    Ok(StatusCode::NO_CONTENT)
}

/// `SandboxPauseRequest` (`requireHealthyGuest` needs nothing: capsem's
/// suspend asks the guest's agent anyway).
#[derive(Deserialize, Default)]
struct Pause {
    /// Keep the memory (E2B's default): capsem suspends the VM; without it
    /// capsem stops the VM and keeps its disk, and a resume boots it.
    memory: Option<bool>,
}

/// `Sandbox.pause`: 409 when it is paused already. A paused sandbox is
/// kept (its timeout pushed to the longest) until connected or killed.
async fn pause(
    State(server): State<Arc<Server>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let Pause { memory } = if body.is_empty() {
        Pause::default()
    } else {
        parse(&body)?
    };
    let (sandbox, state) = find(&server, &id).await?;
    if matches!(state, VmState::Stopped | VmState::Suspended) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("sandbox {id} is paused already"),
        ));
    }
    let how = if memory.unwrap_or(true) {
        "/suspend"
    } else {
        "/stop"
    };
    let _: SandboxInfo = call(Method::POST, &route(&sandbox.name, how), None::<&()>).await?;
    sandbox.expire_in(MAX_TIMEOUT_SECS);
    Ok(StatusCode::NO_CONTENT)
}

/// `Sandbox.connect`: a paused (stopped or suspended) sandbox is started
/// again with the timeout given; a running one's end moves only later, as
/// E2B's does.
async fn connect(
    State(server): State<Arc<Server>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Timeout { timeout } = parse(&body)?;
    let timeout = check_timeout(timeout)?;
    let (sandbox, state) = find(&server, &id).await?;
    if matches!(state, VmState::Stopped | VmState::Suspended) {
        let _: SandboxInfo =
            call(Method::POST, &route(&sandbox.name, "/start"), None::<&()>).await?;
        sandbox.expire_in(timeout);
        return Ok((StatusCode::CREATED, axum::Json(created(&sandbox))).into_response());
    }
    let later = Timestamp::now() + Duration::from_secs(timeout.min(MAX_TIMEOUT_SECS));
    if later > *sandbox.end.borrow() {
        sandbox.expire_in(timeout);
    }
    let status = StatusCode::OK;
    Ok((status, axum::Json(created(&sandbox))).into_response())
}
