//! Serving an API on a unix socket to its owner alone.
//!
//! The socket's directory is private already; the peer's uid
//! (`SO_PEERCRED`) is checked on every request as well, so a socket
//! reached some other way (a descriptor passed on, a loosened directory)
//! still answers nobody else.

use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use axum::Router;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

use crate::api::ErrorBody;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// Its uid, when the kernel told.
    pub uid: Option<u32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        Peer {
            uid: stream.io().peer_cred().ok().map(|cred| cred.uid()),
        }
    }
}

/// Binds `path` (mode 0600), replacing a stale socket nobody answers on.
/// Fails with `AddrInUse` when something does answer.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is in use", path.display()),
        ));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves `router` on `listener` to this process's uid alone, until
/// `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let owner = nix::unistd::geteuid().as_raw();
    let router = router.layer(middleware::from_fn_with_state(owner, owner_only));
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn owner_only(
    State(owner): State<u32>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    if peer.uid == Some(owner) {
        return next.run(request).await;
    }
    let who = peer
        .uid
        .map_or_else(|| "an unknown uid".to_owned(), |uid| format!("uid {uid}"));
    tracing::warn!("refused a request from {who}");
    let error = format!("refused: this capsem service belongs to uid {owner}, not {who}");
    (StatusCode::FORBIDDEN, axum::Json(ErrorBody { error })).into_response()
}
