//! `GET /v1/sandboxes/{name}/net`: the network activity of a sandbox's
//! current (or last) boot as JSON Lines, the records of `capsem net log
//! --json` (docs/json.md); with `follow`, new records as they are written,
//! until the sandbox stops.

use std::path::Path;

use bytes::Bytes;
use capsem_core::session::events::{self, NetCursor, NetworkLog};
use serde_json::json;

use crate::layout::SandboxDir;

/// Most rows of each kind read at once: a busy sandbox's log is sent page
/// by page, never read whole into memory.
const PAGE: usize = 512;

/// The records of `dir`'s current or last boot; `None` when it never booted.
pub fn stream(
    home: &Path,
    dir: SandboxDir,
    follow: bool,
) -> Option<impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static> {
    crate::logs::follow_boot(
        home,
        dir,
        follow,
        NetCursor::default(),
        |session, cursor| {
            // A database not made yet (no request so far) reads as empty.
            let log = events::network_log_since(&session.events_db(), cursor, Some(PAGE)).ok()?;
            Some(lines(&log)).filter(|text| !text.is_empty())
        },
    )
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
