//! `GET /v1/sessions`: the newest sessions (one-shot runs and sandboxes'
//! boots), as `capsem sessions --json` lists them, with their network
//! totals.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use capsem_core::session::Store;
use capsem_core::session::events::{self, EVENTS_FILE, NetSummary};
use capsem_core::session::store::SessionRow;
use serde::{Deserialize, Serialize};

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
