//! `capsem e2b`: E2B's API on 127.0.0.1, so code written against E2B's SDKs
//! runs its sandboxes on this machine's capsem (docs/e2b.md).
//!
//! One port serves both of E2B's planes: the control plane (`/sandboxes`,
//! checked against `X-API-KEY`) and, for each sandbox, envd's data plane
//! (the Connect RPC `process.Process` and `filesystem.Filesystem` services,
//! `/files`, `/health`), told apart by the `E2b-Sandbox-Id` header the SDKs
//! send with every envd call and checked against that sandbox's access
//! token. Each E2B sandbox is a capsem sandbox named `e2b-ID`, run by the
//! service like any other; this process holds what E2B adds (timeouts,
//! metadata, tokens, started commands) and deletes its sandboxes when it
//! stops.

mod control;
mod files;
mod fs;
mod process;
mod proto;

use std::collections::HashMap;
use std::future::IntoFuture;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use capsem_core::paths;
use capsem_core::settings::edit;
use capsem_service::ui::{loopback_host, random_hex, same_secret};
use hyper::Method;
use serde_json::json;

use crate::cmd::run::load_settings;
use crate::cmd::sandbox::{encode, service};
use crate::exit::Failure;

use self::control::Sandbox;
use self::proto::filesystem::FilesystemExt;
use self::proto::process::ProcessExt;

/// The envd version `capsem e2b` answers as: the SDKs gate features on it.
/// 0.5.7 has what is implemented here (stdin and its closing, the default
/// user, octet-stream uploads) and not what is not (file metadata, 0.6.2).
pub const ENVD_VERSION: &str = "0.5.7";
/// How long clients get to finish once the server stops.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The E2B server's state.
pub struct Server {
    port: u16,
    key: String,
    sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    /// Set when it stops: no sandbox is tracked after.
    closing: AtomicBool,
}

impl Server {
    fn sandbox(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.lock().get(id).cloned()
    }

    /// Tracks `sandbox`; false once the server is stopping.
    fn track(&self, sandbox: Arc<Sandbox>) -> bool {
        let mut sandboxes = self.lock();
        if self.closing.load(Ordering::SeqCst) {
            return false;
        }
        sandboxes.insert(sandbox.id.clone(), sandbox);
        true
    }

    /// Stops tracking: every sandbox, handed over to be deleted.
    fn close(&self) -> Vec<Arc<Sandbox>> {
        let mut sandboxes = self.lock();
        self.closing.store(true, Ordering::SeqCst);
        sandboxes.drain().map(|(_, s)| s).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Sandbox>>> {
        self.sandboxes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An error answer of E2B's shape: `{"code": STATUS, "message": ...}`.
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn bad(message: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "code": self.0.as_u16(), "message": self.1 });
        (self.0, axum::Json(body)).into_response()
    }
}

/// Serves E2B's API on 127.0.0.1:`port` (`e2b.port` when absent) until
/// interrupted; then deletes the sandboxes it made.
pub async fn serve(port: Option<u16>) -> Result<i32, Failure> {
    let settings = load_settings()?;
    let port = port.unwrap_or(settings.e2b().port);
    let key = api_key(&settings.e2b().api_key)?;
    service().await?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .map_err(|e| {
            Failure::new(format!("listening on 127.0.0.1:{port}: {e}"))
                .hint("give another port with --port, or set e2b.port")
        })?;
    let server = Arc::new(Server {
        port,
        key: key.clone(),
        sandboxes: Mutex::default(),
        closing: AtomicBool::new(false),
    });
    eprintln!("capsem e2b: E2B's API on http://127.0.0.1:{port}; point E2B's SDKs at it with");
    eprintln!(
        "  export E2B_API_URL=http://127.0.0.1:{port} E2B_SANDBOX_URL=http://127.0.0.1:{port} E2B_API_KEY={key}"
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = router(server.clone());
    let mut serving = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );
    let failed = tokio::select! {
        done = &mut serving => Some(done),
        () = interrupted() => None,
    };
    // The sandboxes go first: deleting them ends the command streams that
    // a graceful shutdown would otherwise wait for.
    let doomed = server.close();
    eprintln!(
        "capsem e2b: stopping; deleting its {} sandboxes",
        doomed.len()
    );
    for killed in futures::future::join_all(doomed.iter().map(|s| s.kill())).await {
        if let Err(ApiError(_, e)) = killed {
            eprintln!("capsem e2b: deleting a sandbox failed: {e}");
        }
    }
    let done = match failed {
        Some(done) => done,
        None => {
            let _ = stop.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, serving).await {
                Ok(done) => done,
                Err(_) => return Ok(0),
            }
        }
    };
    done.map_err(Failure::new)?
        .map_err(|e| Failure::new(format!("serving E2B's API: {e}")))?;
    Ok(0)
}

/// The key in settings, or a new one written to the user's settings.
fn api_key(set: &str) -> Result<String, Failure> {
    if !set.is_empty() {
        return Ok(set.to_owned());
    }
    let key = format!("e2b_{}", &random_hex()[..40]);
    let user = paths::user_settings();
    edit::set(&user, &paths::corp_settings(), "e2b.api_key", &key).map_err(|e| {
        Failure::new(format!("saving a new e2b.api_key: {e}")).hint(format!(
            "set one with `capsem settings set e2b.api_key KEY` ({})",
            user.display()
        ))
    })?;
    eprintln!(
        "capsem e2b: made an API key, saved as e2b.api_key in {}",
        user.display()
    );
    Ok(key)
}

async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn router(server: Arc<Server>) -> Router {
    let connect = connectrpc::Router::new();
    let connect = Arc::new(process::Processes).register(connect);
    let connect = Arc::new(fs::Files).register(connect);
    let envd = Router::new()
        .merge(files::routes())
        .fallback_service(connect.into_axum_service())
        .layer(middleware::from_fn_with_state(server.clone(), envd_gate))
        .with_state(server.clone());
    Router::new()
        .merge(control::routes())
        .route_layer(middleware::from_fn_with_state(server.clone(), api_gate))
        .fallback_service(envd)
        .layer(middleware::from_fn_with_state(server.clone(), host_gate))
        .with_state(server)
}

/// Refuses a request that does not name this server as its host (DNS
/// rebinding: a web page of another name that resolves to 127.0.0.1).
async fn host_gate(State(server): State<Arc<Server>>, request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).map(|h| h.to_str().ok());
    let authority = request.uri().authority().map(|a| a.as_str());
    // Either names the server; both, the same one.
    let local = match (host, authority) {
        (Some(host), Some(authority)) => {
            host.is_some_and(|h| h.eq_ignore_ascii_case(authority))
                && loopback_host(server.port, Some(authority))
        }
        (Some(host), None) => loopback_host(server.port, host),
        (None, authority) => loopback_host(server.port, authority),
    };
    if !local {
        let message = format!(
            "capsem e2b answers only requests to 127.0.0.1:{0} or localhost:{0}",
            server.port
        );
        return ApiError(StatusCode::FORBIDDEN, message).into_response();
    }
    next.run(request).await
}

/// The control plane takes the API key.
async fn api_gate(State(server): State<Arc<Server>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok());
    if !given.is_some_and(|given| same_secret(&server.key, given)) {
        let message = "a missing or wrong X-API-KEY: give capsem's e2b.api_key (E2B_API_KEY)";
        return ApiError(StatusCode::UNAUTHORIZED, message.into()).into_response();
    }
    next.run(request).await
}

/// The data plane takes a sandbox's id and its access token; the sandbox
/// rides along in the request's extensions.
async fn envd_gate(
    State(server): State<Arc<Server>>,
    mut request: Request,
    next: Next,
) -> Response {
    let (id, token) = {
        let header = |name: &str| -> String {
            let value = request.headers().get(name).and_then(|v| v.to_str().ok());
            value.unwrap_or("").to_owned()
        };
        (header("e2b-sandbox-id"), header("x-access-token"))
    };
    if id.is_empty() {
        let message = format!(
            "capsem's E2B API does not serve {} {} (docs/e2b.md says what it does)",
            request.method(),
            request.uri().path()
        );
        return ApiError(StatusCode::NOT_FOUND, message).into_response();
    }
    let Some(sandbox) = server.sandbox(&id) else {
        // The words E2B's proxy uses: the SDKs read "was not found" as
        // "killed or timed out".
        let message = format!("The sandbox {id} was not found");
        return ApiError(StatusCode::BAD_GATEWAY, message).into_response();
    };
    if !same_secret(&sandbox.token, &token) {
        let message = format!("a missing or wrong X-Access-Token for sandbox {id}");
        return ApiError(StatusCode::UNAUTHORIZED, message).into_response();
    }
    request.extensions_mut().insert(sandbox);
    next.run(request).await
}

/// The sandbox a request through [`envd_gate`] is for.
pub fn sandbox_of(
    ctx: &connectrpc::RequestContext,
) -> Result<Arc<Sandbox>, connectrpc::ConnectError> {
    ctx.extensions()
        .get::<Arc<Sandbox>>()
        .cloned()
        .ok_or_else(|| {
            connectrpc::ConnectError::unauthenticated("no sandbox named by E2b-Sandbox-Id")
        })
}

/// A call to the service, the answer decoded.
async fn call<T: serde::de::DeserializeOwned>(
    method: Method,
    path: &str,
    body: Option<&impl serde::Serialize>,
) -> Result<T, ApiError> {
    let client = service()
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    client.call(method, path, body).await.map_err(|e| {
        let status = e
            .status()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY);
        ApiError(status, e.to_string())
    })
}

/// The service's route of the capsem sandbox `name`.
fn route(name: &str, rest: &str) -> String {
    format!("/v1/sandboxes/{}{rest}", encode(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    const TOKEN: &str = "t0ken";

    fn app() -> Router {
        let server = Arc::new(Server {
            port: 3999,
            key: "the-key".into(),
            sandboxes: Mutex::default(),
            closing: AtomicBool::new(false),
        });
        server.track(Sandbox::unbacked("sbx1", TOKEN));
        router(server)
    }

    async fn send(uri: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
        let mut request = Request::builder().method("POST").uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let response = app().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    const HOST: (&str, &str) = ("host", "127.0.0.1:3999");
    const ENVD: &str = "/process.Process/List";

    #[tokio::test]
    async fn only_this_servers_name_is_answered() {
        for host in ["evil.example:3999", "127.0.0.1:80", "localhost"] {
            let (status, _) = send("/sandboxes", &[("host", host), ("x-api-key", "the-key")]).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{host}");
        }
        // An absolute URI naming another server than its Host.
        let (status, _) = send("http://evil.example:3999/sandboxes", &[HOST]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = send("/sandboxes/x/timeout", &[("host", "LOCALHOST:3999")]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn the_control_plane_takes_the_key_and_nothing_else() {
        for key in [None, Some(""), Some("the-kez"), Some("the-key-and-more")] {
            let mut headers = vec![HOST];
            headers.extend(key.map(|k| ("x-api-key", k)));
            let (status, body) = send("/sandboxes/sbx1/timeout", &headers).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}");
            assert!(body.contains("X-API-KEY"), "{body}");
        }
        // An envd token is no API key.
        let (status, _) = send(
            "/sandboxes/sbx1/timeout",
            &[HOST, ("x-access-token", TOKEN)],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, body) = send("/sandboxes/sbx1/fork", &[HOST, ("x-api-key", "the-key")]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            body.contains("does not serve POST /sandboxes/sbx1/fork"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn envd_takes_the_sandboxs_own_token() {
        let (status, body) = send(
            ENVD,
            &[HOST, ("e2b-sandbox-id", "nope"), ("x-access-token", TOKEN)],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(body.contains("was not found"), "{body}");
        for token in [None, Some(""), Some("t0kem"), Some("the-key")] {
            let mut headers = vec![HOST, ("e2b-sandbox-id", "sbx1")];
            headers.extend(token.map(|t| ("x-access-token", t)));
            let (status, _) = send(ENVD, &headers).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        }
        let (status, body) = send(
            ENVD,
            &[HOST, ("e2b-sandbox-id", "sbx1"), ("x-access-token", TOKEN)],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body, "{}",
            "no processes: proto3 JSON leaves the empty list out"
        );
    }
}
