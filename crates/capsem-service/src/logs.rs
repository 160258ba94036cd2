//! `GET /v1/sandboxes/{name}/logs`: the boot log of a sandbox's current
//! (or last) boot, then its commands' starts and ends, as text lines;
//! with `follow`, new lines as they are recorded until the sandbox stops.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use capsem_core::session::Session;
use capsem_core::session::events::{self, ExecRow};
use capsem_core::text::visible;

use crate::layout::SandboxDir;
use crate::lock;

/// How often a followed log looks for more.
const POLL: Duration = Duration::from_millis(300);
/// Most bytes of boot log sent per read.
const READ_BYTES: usize = 64 * 1024;

/// Where the log stream has got to: the boot log's offset, the last
/// command event's seq.
#[derive(Clone, Copy, Default)]
struct Cursor {
    boot_at: u64,
    exec_seq: i64,
}

/// The log of `dir`'s current or last boot; `None` when it never booted.
pub fn stream(
    home: &Path,
    dir: SandboxDir,
    follow: bool,
) -> Option<impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static> {
    follow_boot(home, dir, follow, Cursor::default(), |session, cursor| {
        let (text, boot_at, exec_seq) = more(
            &session.boot_log(),
            cursor.boot_at,
            &session.events_db(),
            cursor.exec_seq,
        )?;
        *cursor = Cursor { boot_at, exec_seq };
        Some(text)
    })
}

/// A stream of what `more` finds recorded for `dir`'s current or last
/// boot after `cursor` (read off the runtime's threads), until it finds
/// nothing; with `follow`, until the sandbox also stops. `None` when the
/// sandbox never booted.
pub(crate) fn follow_boot<C>(
    home: &Path,
    dir: SandboxDir,
    follow: bool,
    cursor: C,
    more: fn(&Session, &mut C) -> Option<String>,
) -> Option<impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static>
where
    C: Send + 'static,
{
    let session = Session::existing(home, &dir.last_session()?)?;
    let state = Some((dir, session, cursor));
    Some(futures::stream::unfold(state, move |state| async move {
        let (dir, session, cursor) = state?;
        let mut state = (session, cursor);
        loop {
            let read = tokio::task::spawn_blocking(move || {
                let (session, mut cursor) = state;
                let found = more(&session, &mut cursor);
                (found, (session, cursor))
            })
            .await;
            let Ok((found, moved)) = read else {
                return None;
            };
            state = moved;
            if let Some(text) = found {
                return Some((Ok(Bytes::from(text)), Some((dir, state.0, state.1))));
            }
            if !follow || !lock::is_held(&dir.lock()) {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }))
}

/// What was recorded after the cursor: the boot log's new bytes (shown
/// with controls made visible) and the new command events.
fn more(boot_log: &PathBuf, at: u64, db: &Path, seq: i64) -> Option<(String, u64, i64)> {
    let mut text = String::new();
    let mut boot_at = at;
    if let Ok(mut file) = std::fs::File::open(boot_log)
        && file.seek(SeekFrom::Start(at)).is_ok()
    {
        let mut buf = Vec::new();
        let _ = file.take(READ_BYTES as u64).read_to_end(&mut buf);
        boot_at += buf.len() as u64;
        for line in String::from_utf8_lossy(&buf).split_inclusive('\n') {
            text.push_str(&visible(line.trim_end_matches(['\n', '\r'])));
            if line.ends_with('\n') {
                text.push('\n');
            }
        }
    }
    let rows = events::exec_log(db, seq).unwrap_or_default();
    let exec_seq = rows.last().map_or(seq, |r| r.seq);
    for row in &rows {
        text.push_str(&describe(row));
        text.push('\n');
    }
    (!text.is_empty()).then_some((text, boot_at, exec_seq))
}

fn describe(row: &ExecRow) -> String {
    let at = format!("[+{:.3} s] exec {}", row.at_us as f64 / 1e6, row.exec_id);
    let value = row.value.unwrap_or_default();
    match row.kind.as_str() {
        "started" => format!(
            "{at} started: {}",
            visible(row.detail.as_deref().unwrap_or(""))
        ),
        "exited" => format!("{at} exited {value}"),
        "signal" => format!("{at} signal {value}"),
        "timed_out" => format!("{at} timed out and was killed"),
        other => format!("{at} {other}"),
    }
}
