//! `GET /v1/sessions`: the newest sessions (one-shot runs and sandboxes'
//! boots), as `capsem sessions --json` lists them, with their network
//! totals; `GET /v1/sessions/{id}`: one, with its commands' starts and
//! ends; `GET /v1/sessions/{id}/transcript`: its terminal transcript.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use capsem_core::session::Store;
use capsem_core::session::events::{self, EVENTS_FILE, ExecRow, NetSummary};
use capsem_core::session::store::{SessionRow, StoreError};
use capsem_core::session::transcript::TRANSCRIPT_FILE;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::service::ApiError;

/// Sessions listed when the request names no `limit`.
const DEFAULT_LIMIT: usize = 100;
/// Most sessions one request lists.
const MAX_LIMIT: usize = 1000;

/// A session as listed.
#[derive(Debug, Serialize)]
pub struct Listed {
    /// The session's record (docs/json.md, "session").
    #[serde(flatten)]
    pub session: SessionRow,
    /// What it did on the network.
    pub network: NetSummary,
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

/// The routes, for the sessions of the capsem home `home`.
pub fn routes<S: Clone + Send + Sync + 'static>(home: &Path) -> Router<S> {
    Router::new()
        .route("/v1/sessions", get(list))
        .route("/v1/sessions/{id}", get(show))
        .route("/v1/sessions/{id}/transcript", get(transcript))
        .with_state(Arc::new(home.to_owned()))
}

async fn list(
    State(home): State<Arc<PathBuf>>,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<Vec<Listed>>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    tokio::task::spawn_blocking(move || listed(&home, limit))
        .await
        .map_err(ApiError::internal)?
        .map(axum::Json)
}

fn listed(home: &Path, limit: usize) -> Result<Vec<Listed>, ApiError> {
    let store = Store::open(home).map_err(ApiError::internal)?;
    let rows = store.list(limit).map_err(ApiError::internal)?;
    Ok(rows
        .into_iter()
        .map(|session| Listed {
            network: events::network_summary(&store.dir_of(&session.id).join(EVENTS_FILE))
                .unwrap_or_default(),
            session,
        })
        .collect())
}

/// A session in full, as its page shows it.
#[derive(Debug, Serialize)]
pub struct Detail {
    /// Its record, phases included (docs/json.md, "session").
    pub session: SessionRow,
    /// What it did on the network.
    pub network: NetSummary,
    /// Its commands' starts, signals and ends, oldest first: the first
    /// [`events::EXEC_LOG_PAGE`].
    pub execs: Vec<ExecMark>,
    /// Whether more were recorded than `execs` holds.
    pub execs_cut: bool,
    /// The size of its terminal transcript, when it has one.
    pub transcript_bytes: Option<u64>,
}

/// A command's start, signal or end (`exec_events` without stdio).
#[derive(Debug, Serialize)]
pub struct ExecMark {
    /// Since the session started, ms.
    pub at_ms: f64,
    /// The command's number within the session.
    pub exec: i64,
    /// `started`, `signal`, `exited` or `timed_out`.
    pub kind: String,
    /// The exit code or signal.
    pub value: Option<i64>,
    /// The command line of `started`.
    pub command: Option<String>,
}

impl From<ExecRow> for ExecMark {
    fn from(row: ExecRow) -> Self {
        ExecMark {
            at_ms: row.at_us as f64 / 1000.0,
            exec: row.exec_id,
            kind: row.kind,
            value: row.value,
            command: row.detail,
        }
    }
}

/// The directory of the session `given` names (its id or a prefix).
fn session_dir(home: &Path, given: &str) -> Result<(Store, String), ApiError> {
    let store = Store::open(home).map_err(ApiError::internal)?;
    match store.resolve(given) {
        Ok(id) => Ok((store, id)),
        Err(e @ (StoreError::NotFound(_) | StoreError::Ambiguous { .. })) => {
            Err(ApiError(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e) => Err(ApiError::internal(e)),
    }
}

async fn show(
    State(home): State<Arc<PathBuf>>,
    UrlPath(id): UrlPath<String>,
) -> Result<axum::Json<Detail>, ApiError> {
    tokio::task::spawn_blocking(move || detail(&home, &id))
        .await
        .map_err(ApiError::internal)?
        .map(axum::Json)
}

fn detail(home: &Path, given: &str) -> Result<Detail, ApiError> {
    let (store, id) = session_dir(home, given)?;
    let session = store
        .get(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("session {id} vanished")))?;
    let dir = store.dir_of(&id);
    let db = dir.join(EVENTS_FILE);
    let rows = events::exec_log(&db, 0).map_err(ApiError::internal)?;
    let execs_cut = rows.len() as i64 >= events::EXEC_LOG_PAGE;
    Ok(Detail {
        network: events::network_summary(&db).unwrap_or_default(),
        execs: rows.into_iter().map(ExecMark::from).collect(),
        execs_cut,
        transcript_bytes: std::fs::metadata(dir.join(TRANSCRIPT_FILE))
            .ok()
            .map(|m| m.len()),
        session,
    })
}

/// The transcript's bytes (docs/transcript.md), streamed from its file.
async fn transcript(
    State(home): State<Arc<PathBuf>>,
    UrlPath(id): UrlPath<String>,
) -> Result<axum::response::Response, ApiError> {
    let (dir, id) = tokio::task::spawn_blocking(move || {
        session_dir(&home, &id).map(|(store, id)| (store.dir_of(&id), id))
    })
    .await
    .map_err(ApiError::internal)??;
    let file = tokio::fs::File::open(dir.join(TRANSCRIPT_FILE))
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("session {id} has no terminal transcript"),
            )
        })?;
    let chunks = futures::stream::unfold(file, |mut file| async move {
        let mut chunk = vec![0; 64 * 1024];
        match file.read(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(chunks),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsem_core::session::store::NewSession;
    use tower::ServiceExt;

    async fn get(home: &Path, uri: &str) -> StatusCode {
        let request = axum::http::Request::get(uri).body(Body::empty()).unwrap();
        let app: Router = routes(home);
        app.oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn only_a_recorded_session_is_read_and_paths_never_reach_the_disk() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        store
            .insert(&NewSession {
                id: "ab12cd34".into(),
                started_at_ms: 1,
                command: "true".into(),
                cpus: 1,
                memory_mib: 512,
                assets: Default::default(),
            })
            .unwrap();
        // A transcript planted beside the store, reachable only by a path.
        std::fs::write(home.path().join(TRANSCRIPT_FILE), b"secret").unwrap();
        assert_eq!(get(home.path(), "/v1/sessions/ab12").await, StatusCode::OK);
        for hostile in ["..", "..%2F..", "%2E%2E", "ab12cd34%2F..%2F..", "nope"] {
            for tail in ["", "/transcript"] {
                let uri = format!("/v1/sessions/{hostile}{tail}");
                assert_eq!(get(home.path(), &uri).await, StatusCode::NOT_FOUND, "{uri}");
            }
        }
        // A session that ran without a terminal has no transcript.
        let uri = "/v1/sessions/ab12cd34/transcript";
        assert_eq!(get(home.path(), uri).await, StatusCode::NOT_FOUND);
    }
}
