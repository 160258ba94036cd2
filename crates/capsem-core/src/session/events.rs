//! A session's own event database (`sessions/ID/session.db`) and its
//! writer.
//!
//! Events go through a bounded channel to one writer thread, which commits
//! them in batches. Recording never waits: when the channel is full the
//! event is dropped and counted, and the count is stored with the session
//! (it stays 0 in normal use).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::{Connection, params};

use super::migrate;

/// The event database in a session directory.
pub const EVENTS_FILE: &str = "session.db";
/// Events that may wait for the writer before new ones are dropped.
const QUEUE_LEN: usize = 16 * 1024;
/// Most events committed in one transaction.
const BATCH: usize = 4096;

/// Event schema, one entry per version.
const MIGRATIONS: &[&str] = &["CREATE TABLE exec_events (
        seq     INTEGER PRIMARY KEY,
        at_us   INTEGER NOT NULL,
        exec_id INTEGER NOT NULL,
        kind    TEXT NOT NULL
                CHECK (kind IN ('started', 'stdin', 'stdout', 'stderr', 'signal', 'exited')),
        bytes   INTEGER,
        value   INTEGER,
        detail  TEXT
    );"];

/// Something that happened in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A command started.
    Started {
        /// Its exec id.
        exec: u32,
        /// The command as typed.
        command: String,
    },
    /// Bytes sent to the command's stdin.
    Stdin {
        /// Exec id.
        exec: u32,
        /// How many.
        bytes: usize,
    },
    /// Bytes the command wrote to stdout.
    Stdout {
        /// Exec id.
        exec: u32,
        /// How many.
        bytes: usize,
    },
    /// Bytes the command wrote to stderr.
    Stderr {
        /// Exec id.
        exec: u32,
        /// How many.
        bytes: usize,
    },
    /// A signal forwarded to the command.
    Signal {
        /// Exec id.
        exec: u32,
        /// Signal number.
        signal: u8,
    },
    /// The command ended with this shell exit code.
    Exited {
        /// Exec id.
        exec: u32,
        /// Exit code (128+N for signal N).
        code: u8,
    },
}

/// A handle to record events; cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    tx: Option<SyncSender<(u64, Event)>>,
    lost: Arc<AtomicU64>,
    start: Instant,
}

impl EventLog {
    /// A log that records nothing.
    pub fn disabled() -> Self {
        EventLog {
            tx: None,
            lost: Arc::default(),
            start: Instant::now(),
        }
    }

    /// Records an event without ever blocking.
    pub fn record(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        let at_us = self.start.elapsed().as_micros() as u64;
        match tx.try_send((at_us, event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The writer thread of one session's events.
pub struct EventWriter {
    thread: JoinHandle<Result<u64, rusqlite::Error>>,
    lost: Arc<AtomicU64>,
}

/// What a finished writer reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventCounts {
    /// Events committed.
    pub written: u64,
    /// Events dropped (queue full or a failed database).
    pub lost: u64,
}

/// Starts the writer of the event database at `path`. The database is
/// created by the writer thread, off the caller's path; if that fails, the
/// error is reported by [`EventWriter::finish`] and every event counts as
/// lost.
pub fn start(path: &Path) -> std::io::Result<(EventLog, EventWriter)> {
    let (tx, rx) = sync_channel(QUEUE_LEN);
    let lost = Arc::new(AtomicU64::new(0));
    let path = path.to_owned();
    let thread_lost = lost.clone();
    let thread = std::thread::Builder::new()
        .name("session-events".into())
        .spawn(move || {
            let result = migrate::open(&path).and_then(|mut conn| {
                migrate::migrate(&mut conn, MIGRATIONS)?;
                write_loop(conn, &rx, &thread_lost)
            });
            if result.is_err() {
                // Nothing more will be written: count the rest as lost.
                let rest = rx.iter().count() as u64;
                thread_lost.fetch_add(rest, Ordering::Relaxed);
            }
            result
        })?;
    let log = EventLog {
        tx: Some(tx),
        lost: lost.clone(),
        start: Instant::now(),
    };
    Ok((log, EventWriter { thread, lost }))
}

impl EventWriter {
    /// Waits for every queued event to be written. All [`EventLog`] clones
    /// must have been dropped first, or this waits for them.
    pub fn finish(self) -> EventCounts {
        let result = self.thread.join();
        let lost = self.lost.load(Ordering::Relaxed);
        match result {
            Ok(Ok(written)) => EventCounts { written, lost },
            Ok(Err(e)) => {
                tracing::warn!("writing session events failed: {e}");
                EventCounts { written: 0, lost }
            }
            Err(_) => EventCounts { written: 0, lost },
        }
    }
}

fn write_loop(
    mut conn: Connection,
    rx: &Receiver<(u64, Event)>,
    lost: &AtomicU64,
) -> Result<u64, rusqlite::Error> {
    let mut written = 0u64;
    let mut batch = Vec::with_capacity(BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        let size = batch.len() as u64;
        if let Err(e) = write_batch(&mut conn, &mut batch) {
            lost.fetch_add(size, Ordering::Relaxed);
            return Err(e);
        }
        written += size;
    }
    Ok(written)
}

/// Commits `batch` in one transaction, emptying it.
fn write_batch(conn: &mut Connection, batch: &mut Vec<(u64, Event)>) -> rusqlite::Result<()> {
    {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO exec_events (at_us, exec_id, kind, bytes, value, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (at_us, event) in batch.drain(..) {
                let (exec, kind, bytes, value, detail) = columns(event);
                insert.execute(params![at_us as i64, exec, kind, bytes, value, detail])?;
            }
        }
        tx.commit()
    }
}

type Columns = (u32, &'static str, Option<i64>, Option<i64>, Option<String>);

fn columns(event: Event) -> Columns {
    match event {
        Event::Started { exec, command } => (exec, "started", None, None, Some(command)),
        Event::Stdin { exec, bytes } => (exec, "stdin", Some(bytes as i64), None, None),
        Event::Stdout { exec, bytes } => (exec, "stdout", Some(bytes as i64), None, None),
        Event::Stderr { exec, bytes } => (exec, "stderr", Some(bytes as i64), None, None),
        Event::Signal { exec, signal } => (exec, "signal", None, Some(signal.into()), None),
        Event::Exited { exec, code } => (exec, "exited", None, Some(code.into()), None),
    }
}

/// Per-kind event counts and byte totals of a session's database.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventSummary {
    /// `PRAGMA integrity_check` output.
    pub integrity: Vec<String>,
    /// (kind, events, bytes).
    pub kinds: Vec<(String, u64, u64)>,
}

/// Summarises the event database at `path` (read-only).
pub fn summarize(path: &PathBuf) -> rusqlite::Result<EventSummary> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let integrity = conn
        .prepare("PRAGMA integrity_check")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let kinds = conn
        .prepare(
            "SELECT kind, count(*), coalesce(sum(bytes), 0) FROM exec_events
             GROUP BY kind ORDER BY kind",
        )?
        .query_map([], |row| {
            let count: i64 = row.get(1)?;
            let bytes: i64 = row.get(2)?;
            Ok((row.get(0)?, count as u64, bytes as u64))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(EventSummary { integrity, kinds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_written_in_order_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENTS_FILE);
        let (log, writer) = start(&path).unwrap();
        log.record(Event::Started {
            exec: 1,
            command: "cat".into(),
        });
        for _ in 0..1000 {
            log.record(Event::Stdout { exec: 1, bytes: 10 });
        }
        log.record(Event::Exited { exec: 1, code: 0 });
        drop(log);
        let counts = writer.finish();
        assert_eq!(
            counts,
            EventCounts {
                written: 1002,
                lost: 0
            }
        );
        let summary = summarize(&path).unwrap();
        assert_eq!(summary.integrity, ["ok"]);
        assert!(summary.kinds.contains(&("stdout".into(), 1000, 10_000)));
    }

    #[test]
    fn an_unwritable_database_counts_every_event_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer) = start(&dir.path().join("missing/dir/session.db")).unwrap();
        for _ in 0..10 {
            log.record(Event::Stdin { exec: 1, bytes: 1 });
        }
        drop(log);
        assert_eq!(
            writer.finish(),
            EventCounts {
                written: 0,
                lost: 10
            }
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let (tx, _rx) = sync_channel(1);
        let lost = Arc::new(AtomicU64::new(0));
        let log = EventLog {
            tx: Some(tx),
            lost: lost.clone(),
            start: Instant::now(),
        };
        for _ in 0..5 {
            log.record(Event::Stdin { exec: 1, bytes: 1 });
        }
        assert_eq!(lost.load(Ordering::Relaxed), 4);
        EventLog::disabled().record(Event::Stdin { exec: 1, bytes: 1 });
    }
}
