//! `GET /v1/sandboxes/{name}/net`: the network activity of a sandbox's
//! current (or last) boot as JSON Lines, the records of `capsem net log
//! --json` (docs/json.md); with `follow`, new records as they are written,
//! until the sandbox stops.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use capsem_core::session::Session;
use capsem_core::session::events::{self, NetCursor, NetworkLog};
use serde_json::json;

use crate::layout::SandboxDir;
use crate::lock;

/// How often a followed log looks for more.
const POLL: Duration = Duration::from_millis(250);
/// Most rows of each kind read at once: a busy sandbox's log is sent page
/// by page, never read whole into memory.
const PAGE: usize = 512;

/// The records of `dir`'s current or last boot; `None` when it never booted.
pub fn stream(
    home: &Path,
    dir: SandboxDir,
    follow: bool,
) -> Option<impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static> {
    let session = Session::existing(home, &dir.last_session()?)?;
    let state = (dir, session, NetCursor::default());
    Some(futures::stream::unfold(
        Some(state),
        move |state| async move {
            let (dir, session, mut cursor) = state?;
            loop {
                let db = session.events_db();
                let read = tokio::task::spawn_blocking(move || {
                    let log = events::network_log_since(&db, &mut cursor, Some(PAGE));
                    (log, cursor)
                })
                .await;
                let Ok((log, moved)) = read else {
                    return None;
                };
                cursor = moved;
                // A database not made yet (no request so far) reads as empty.
                let lines = log.map(|log| lines(&log)).unwrap_or_default();
                if !lines.is_empty() {
                    return Some((Ok(Bytes::from(lines)), Some((dir, session, cursor))));
                }
                if !follow || !lock::is_held(&dir.lock()) {
                    return None;
                }
                tokio::time::sleep(POLL).await;
            }
        },
    ))
}

/// One JSON line per record.
fn lines(log: &NetworkLog) -> String {
    let dns = log
        .dns
        .iter()
        .map(|row| json!({ "type": "dns", "data": row }));
    let net = log
        .requests
        .iter()
        .map(|row| json!({ "type": "net", "data": row }));
    let calls = log
        .model_calls
        .iter()
        .map(|row| json!({ "type": "model_call", "data": row }));
    dns.chain(net)
        .chain(calls)
        .map(|record| format!("{record}\n"))
        .collect()
}
