//! A session's own event database (`sessions/ID/session.db`) and its
//! writer.
//!
//! Events go through a bounded channel to one writer thread, which commits
//! them in batches. Recording never waits: when the channel is full the
//! event is dropped and counted, and the count is stored with the session
//! (it stays 0 in normal use).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::{Connection, params};

use super::budget::Budget;
use super::migrate;

/// The event database in a session directory.
pub const EVENTS_FILE: &str = "session.db";
/// Events that may wait for the writer before new ones are dropped.
const QUEUE_LEN: usize = 16 * 1024;
/// Most events committed in one transaction.
const BATCH: usize = 4096;

/// Event schema, one entry per version.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE exec_events (
        seq     INTEGER PRIMARY KEY,
        at_us   INTEGER NOT NULL,
        exec_id INTEGER NOT NULL,
        kind    TEXT NOT NULL
                CHECK (kind IN ('started', 'stdin', 'stdout', 'stderr', 'signal', 'exited')),
        bytes   INTEGER,
        value   INTEGER,
        detail  TEXT
    );",
    "CREATE TABLE net_events (
        seq         INTEGER PRIMARY KEY,
        at_us       INTEGER NOT NULL,
        pid         INTEGER,
        process     TEXT,
        protocol    TEXT NOT NULL,
        domain      TEXT,
        ip          TEXT,
        port        INTEGER NOT NULL,
        method      TEXT,
        path        TEXT,
        status      INTEGER,
        bytes_up    INTEGER NOT NULL DEFAULT 0,
        bytes_down  INTEGER NOT NULL DEFAULT 0,
        duration_us INTEGER,
        decision    TEXT NOT NULL CHECK (decision IN ('allowed', 'denied', 'error')),
        rule        TEXT,
        error       TEXT
    );
    CREATE TABLE dns_events (
        seq      INTEGER PRIMARY KEY,
        at_us    INTEGER NOT NULL,
        name     TEXT NOT NULL,
        decision TEXT NOT NULL CHECK (decision IN ('allowed', 'denied')),
        rule     TEXT,
        address  TEXT
    );",
    "ALTER TABLE net_events ADD COLUMN key_fingerprint TEXT;
    CREATE TABLE model_calls (
        seq             INTEGER PRIMARY KEY,
        at_us           INTEGER NOT NULL,
        provider        TEXT NOT NULL,
        model           TEXT,
        path            TEXT,
        status          INTEGER,
        input_tokens    INTEGER NOT NULL,
        output_tokens   INTEGER NOT NULL,
        stop_reason     TEXT,
        duration_us     INTEGER NOT NULL,
        cost_usd        REAL,
        key_fingerprint TEXT
    );",
    "ALTER TABLE net_events ADD COLUMN request_body TEXT;
     ALTER TABLE net_events ADD COLUMN response_body TEXT;",
    "ALTER TABLE net_events ADD COLUMN reported_by TEXT NOT NULL DEFAULT 'host'
        CHECK (reported_by IN ('host', 'guest'));",
    // A command of a named sandbox past its timeout is killed, the VM
    // goes on: its end is `timed_out`. SQLite cannot widen a CHECK in
    // place.
    "CREATE TABLE exec_events_v6 (
        seq     INTEGER PRIMARY KEY,
        at_us   INTEGER NOT NULL,
        exec_id INTEGER NOT NULL,
        kind    TEXT NOT NULL
                CHECK (kind IN ('started', 'stdin', 'stdout', 'stderr', 'signal', 'exited', 'timed_out')),
        bytes   INTEGER,
        value   INTEGER,
        detail  TEXT
    );
    INSERT INTO exec_events_v6 SELECT * FROM exec_events;
    DROP TABLE exec_events;
    ALTER TABLE exec_events_v6 RENAME TO exec_events;",
];

/// JSON gives times in milliseconds, one unit everywhere (docs/json.md).
pub mod ms {
    /// Microseconds as fractional milliseconds.
    pub fn from_us<S: serde::Serializer>(us: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(*us as f64 / 1000.0)
    }

    /// A duration as fractional milliseconds.
    pub fn from_opt_duration<S: serde::Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64() * 1000.0),
            None => s.serialize_none(),
        }
    }

    /// [`from_us`] for an optional value.
    pub fn from_opt_us<S: serde::Serializer>(us: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match us {
            Some(us) => from_us(us, s),
            None => s.serialize_none(),
        }
    }
}

/// Most bytes kept of a request's path and query.
pub const MAX_PATH: usize = 2048;
/// Most bytes kept of a process's command line.
pub const MAX_PROCESS: usize = 512;
/// Most bytes kept of other text fields (rules, errors, methods, models).
pub const MAX_FIELD: usize = 1024;

/// Something that happened in a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Something a command did.
    Exec {
        /// Its exec id.
        exec: u32,
        /// What.
        what: ExecEvent,
    },
    /// A guest connection or request, allowed or not.
    Net(Box<NetEvent>),
    /// A guest DNS query.
    Dns(DnsEvent),
    /// A call to a model API.
    Model(Box<ModelCall>),
}

/// What a command did: one row of `exec_events`.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    /// It started.
    Started {
        /// The command as typed.
        command: String,
    },
    /// Bytes sent to its stdin.
    Stdin {
        /// How many.
        bytes: usize,
    },
    /// Bytes it wrote to stdout.
    Stdout {
        /// How many.
        bytes: usize,
    },
    /// Bytes it wrote to stderr.
    Stderr {
        /// How many.
        bytes: usize,
    },
    /// A signal forwarded to it.
    Signal {
        /// Signal number.
        signal: u8,
    },
    /// It ended with this shell exit code (128+N for signal N).
    Exited {
        /// The code.
        code: u8,
    },
    /// It ran past its timeout and was killed.
    TimedOut,
}

/// One row of `model_calls`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelCall {
    /// `anthropic`, `openai` or `google`.
    pub provider: String,
    /// The model.
    pub model: Option<String>,
    /// The API path.
    pub path: Option<String>,
    /// HTTP status.
    pub status: Option<u16>,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Why generation stopped.
    pub stop_reason: Option<String>,
    /// From the request to the end of the response (`duration_ms` in JSON).
    #[serde(rename = "duration_ms", serialize_with = "ms::from_us")]
    pub duration_us: u64,
    /// Estimated from the checked-in price table.
    pub cost_usd: Option<f64>,
    /// Fingerprint of the key the proxy supplied.
    pub key_fingerprint: Option<String>,
}

/// Whether the network policy let something through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// It went ahead.
    Allowed,
    /// The policy refused it.
    #[default]
    Denied,
    /// It was allowed but failed (upstream unreachable, bad TLS).
    Error,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::Error => "error",
        }
    }
}

/// Who asserts a `net_events` row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    /// The host saw it happen (a connection, a request, a DNS query).
    #[default]
    Host,
    /// Only the guest says so (a packet its firewall rejected): guest root
    /// can forge such a report.
    Guest,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Reporter::Host => "host",
            Reporter::Guest => "guest",
        }
    }
}

/// One row of `net_events`: a connection that was refused or failed, or one
/// HTTP request on an allowed connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetEvent {
    /// Who asserts the row.
    pub reported_by: Reporter,
    /// Guest pid of the process, as the guest reports it (not verified).
    pub pid: Option<u32>,
    /// Its command line, as the guest reports it (not verified).
    pub process: Option<String>,
    /// `https`, `http`, `tcp`, `udp`, `icmp`...
    pub protocol: String,
    /// The name the guest resolved, when there is one.
    pub domain: Option<String>,
    /// The address: upstream when connected, else the guest's destination.
    pub ip: Option<String>,
    /// Destination port.
    pub port: u16,
    /// HTTP method.
    pub method: Option<String>,
    /// HTTP path and query.
    pub path: Option<String>,
    /// HTTP status from upstream.
    pub status: Option<u16>,
    /// Request body bytes sent upstream.
    pub bytes_up: u64,
    /// Response body bytes returned to the guest.
    pub bytes_down: u64,
    /// From the request to the end of the response (`duration_ms` in JSON).
    #[serde(rename = "duration_ms", serialize_with = "ms::from_opt_us")]
    pub duration_us: Option<u64>,
    /// The decision.
    pub decision: Verdict,
    /// The rule that decided.
    pub rule: Option<String>,
    /// What failed.
    pub error: Option<String>,
    /// BLAKE3 fingerprint of the API key the proxy put in the request.
    pub key_fingerprint: Option<String>,
    /// The request body's first bytes, as text (`network.log_bodies`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
    /// The response body's first bytes, as text (`network.log_bodies`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
}

impl NetEvent {
    /// The event with its guest-controlled text fields cut to bounded
    /// lengths (the cut is noted in the field).
    pub fn bounded(mut self) -> NetEvent {
        use crate::text::clip_opt;
        clip_opt(&mut self.path, MAX_PATH);
        clip_opt(&mut self.process, MAX_PROCESS);
        for field in [&mut self.method, &mut self.rule, &mut self.error] {
            clip_opt(field, MAX_FIELD);
        }
        self
    }
}

/// One row of `dns_events`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DnsEvent {
    /// The name asked for.
    pub name: String,
    /// Whether it got an address.
    pub allowed: bool,
    /// The rule that decided.
    pub rule: String,
    /// The synthetic address given.
    pub address: Option<String>,
}

/// A handle to record events; cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    tx: Option<SyncSender<(u64, Event)>>,
    lost: Arc<AtomicU64>,
    /// Events not kept because the session's budget was spent.
    over_budget: Arc<AtomicU64>,
    budget: Arc<Budget>,
    start: Instant,
}

impl EventLog {
    /// A log that records nothing.
    pub fn disabled() -> Self {
        EventLog {
            tx: None,
            lost: Arc::default(),
            over_budget: Arc::default(),
            budget: Arc::default(),
            start: Instant::now(),
        }
    }

    /// Records what command `exec` did.
    pub fn exec(&self, exec: u32, what: ExecEvent) {
        self.record(Event::Exec { exec, what });
    }

    /// Records an event without ever blocking, if the session's budget
    /// has room for it.
    pub fn record(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        if !self.budget.take(event.cost()) {
            self.over_budget.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let at_us = self.start.elapsed().as_micros() as u64;
        match tx.try_send((at_us, event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Bytes a row takes in the database beyond its text: its integers and
/// record header, on the high side.
const ROW_OVERHEAD: u64 = 64;
/// SQLite's page, and the most of one a row can use.
const PAGE: u64 = 4096;
const USABLE: u64 = PAGE - 35;

/// The disk a row of `bytes` takes: its share of a page (a page holds
/// whole rows only, so a row of just over half a page takes all of one),
/// or the pages it overflows into. Charging this keeps the file within the
/// budget its rows are charged to.
fn on_disk(bytes: u64) -> u64 {
    if bytes > USABLE {
        return bytes.div_ceil(PAGE - 4) * PAGE;
    }
    PAGE / (USABLE / bytes)
}

impl Event {
    /// What recording this event is charged to the session's budget.
    fn cost(&self) -> u64 {
        let len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let text = match self {
            Event::Exec { what, .. } => match what {
                ExecEvent::Started { command } => command.len(),
                _ => 0,
            },
            Event::Net(e) => {
                e.protocol.len()
                    + [
                        &e.process, &e.domain, &e.ip, &e.method, &e.path, &e.rule, &e.error,
                    ]
                    .into_iter()
                    .map(len)
                    .sum::<usize>()
                    + len(&e.key_fingerprint)
                    + len(&e.request_body)
                    + len(&e.response_body)
            }
            Event::Dns(d) => d.name.len() + d.rule.len() + len(&d.address),
            Event::Model(c) => {
                c.provider.len()
                    + [&c.model, &c.path, &c.stop_reason, &c.key_fingerprint]
                        .into_iter()
                        .map(len)
                        .sum::<usize>()
            }
        };
        on_disk(text as u64 + ROW_OVERHEAD)
    }
}

/// The writer thread of one session's events.
pub struct EventWriter {
    thread: JoinHandle<Result<u64, rusqlite::Error>>,
    lost: Arc<AtomicU64>,
    over_budget: Arc<AtomicU64>,
}

/// What a finished writer reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Events committed.
    pub written: u64,
    /// Events dropped (queue full or a failed database).
    pub lost: u64,
    /// Events not kept because the session's budget was spent.
    pub over_budget: u64,
}

/// Starts the writer of the event database at `path`, whose events are
/// charged to `budget`. The database is created by the writer thread, off
/// the caller's path; if that fails, the error is reported by
/// [`EventWriter::finish`] and every event counts as lost.
pub fn start(path: &Path, budget: Arc<Budget>) -> std::io::Result<(EventLog, EventWriter)> {
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
    let over_budget = Arc::new(AtomicU64::new(0));
    let log = EventLog {
        tx: Some(tx),
        lost: lost.clone(),
        over_budget: over_budget.clone(),
        budget,
        start: Instant::now(),
    };
    let writer = EventWriter {
        thread,
        lost,
        over_budget,
    };
    Ok((log, writer))
}

impl EventWriter {
    /// Waits for every queued event to be written. All [`EventLog`] clones
    /// must have been dropped first, or this waits for them.
    pub fn finish(self) -> EventCounts {
        let result = self.thread.join();
        let counts = EventCounts {
            written: 0,
            lost: self.lost.load(Ordering::Relaxed),
            over_budget: self.over_budget.load(Ordering::Relaxed),
        };
        match result {
            Ok(Ok(written)) => EventCounts { written, ..counts },
            Ok(Err(e)) => {
                tracing::warn!("writing session events failed: {e}");
                counts
            }
            Err(_) => counts,
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
                let at_us = at_us as i64;
                match event {
                    Event::Net(net) => insert_net(&tx, at_us, &net)?,
                    Event::Model(call) => insert_model(&tx, at_us, &call)?,
                    Event::Dns(dns) => {
                        tx.prepare_cached(
                            "INSERT INTO dns_events (at_us, name, decision, rule, address)
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                        )?
                        .execute(params![
                            at_us,
                            dns.name,
                            if dns.allowed { "allowed" } else { "denied" },
                            dns.rule,
                            dns.address
                        ])?;
                    }
                    Event::Exec { exec, what } => {
                        let (kind, bytes, value, detail) = columns(what);
                        insert.execute(params![at_us, exec, kind, bytes, value, detail])?;
                    }
                }
            }
        }
        tx.commit()
    }
}

fn insert_net(tx: &rusqlite::Transaction<'_>, at_us: i64, e: &NetEvent) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO net_events (at_us, pid, process, protocol, domain, ip, port, method,
             path, status, bytes_up, bytes_down, duration_us, decision, rule, error,
             key_fingerprint, request_body, response_body, reported_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                 ?18, ?19, ?20)",
    )?
    .execute(params![
        at_us,
        e.pid,
        e.process,
        e.protocol,
        e.domain,
        e.ip,
        e.port,
        e.method,
        e.path,
        e.status,
        e.bytes_up as i64,
        e.bytes_down as i64,
        e.duration_us.map(|d| d as i64),
        e.decision.as_str(),
        e.rule,
        e.error,
        e.key_fingerprint,
        e.request_body,
        e.response_body,
        e.reported_by.as_str()
    ])?;
    Ok(())
}

fn insert_model(tx: &rusqlite::Transaction<'_>, at_us: i64, c: &ModelCall) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO model_calls (at_us, provider, model, path, status, input_tokens,
             output_tokens, stop_reason, duration_us, cost_usd, key_fingerprint)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        at_us,
        c.provider,
        c.model,
        c.path,
        c.status,
        c.input_tokens as i64,
        c.output_tokens as i64,
        c.stop_reason,
        c.duration_us as i64,
        c.cost_usd,
        c.key_fingerprint
    ])?;
    Ok(())
}

type Columns = (&'static str, Option<i64>, Option<i64>, Option<String>);

/// The `exec_events` columns (kind, bytes, value, detail) of an exec event.
fn columns(what: ExecEvent) -> Columns {
    match what {
        ExecEvent::Started { command } => ("started", None, None, Some(command)),
        ExecEvent::Stdin { bytes } => ("stdin", Some(bytes as i64), None, None),
        ExecEvent::Stdout { bytes } => ("stdout", Some(bytes as i64), None, None),
        ExecEvent::Stderr { bytes } => ("stderr", Some(bytes as i64), None, None),
        ExecEvent::Signal { signal } => ("signal", None, Some(signal.into()), None),
        ExecEvent::Exited { code } => ("exited", None, Some(code.into()), None),
        ExecEvent::TimedOut => ("timed_out", None, None, None),
    }
}

/// Per-kind event counts and byte totals of a session's database.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventSummary {
    /// `PRAGMA integrity_check` output.
    pub integrity: Vec<String>,
    /// Events and bytes per kind (`stdout`, `exited`...).
    pub kinds: std::collections::BTreeMap<String, KindCount>,
    /// What the session's guest did on the network.
    pub network: NetSummary,
}

/// How many events of one kind a session has, and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KindCount {
    /// Events.
    pub events: u64,
    /// Bytes they carried.
    pub bytes: u64,
}

/// Totals of a session's network events.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NetSummary {
    /// Requests and connections let through.
    pub allowed: u64,
    /// Refused by the policy.
    pub denied: u64,
    /// Allowed but failed.
    pub errors: u64,
    /// Request bytes sent upstream.
    pub bytes_up: u64,
    /// Response bytes returned to the guest.
    pub bytes_down: u64,
    /// DNS queries answered.
    pub dns_queries: u64,
    /// Of which refused.
    pub dns_denied: u64,
    /// Calls to model APIs.
    pub model_calls: u64,
    /// Their input tokens.
    pub input_tokens: u64,
    /// Their output tokens.
    pub output_tokens: u64,
    /// Their estimated cost in USD (models in the price table only).
    pub cost_usd: f64,
}

/// A `model_calls` row with its time.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelRow {
    /// Microseconds since the session started (`at_ms` in JSON).
    #[serde(rename = "at_ms", serialize_with = "ms::from_us")]
    pub at_us: u64,
    /// The call.
    #[serde(flatten)]
    pub call: ModelCall,
}

/// A `dns_events` row with its time.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DnsRow {
    /// Microseconds since the session started (`at_ms` in JSON).
    #[serde(rename = "at_ms", serialize_with = "ms::from_us")]
    pub at_us: u64,
    /// The query.
    #[serde(flatten)]
    pub query: DnsEvent,
}

/// A `net_events` row with its time.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NetRow {
    /// Microseconds since the session started (`at_ms` in JSON).
    #[serde(rename = "at_ms", serialize_with = "ms::from_us")]
    pub at_us: u64,
    /// The event.
    #[serde(flatten)]
    pub event: NetEvent,
}

fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |row| row.get(0),
    )
}

/// Opens a session database read-only. Databases written before the
/// network existed lack its tables; they read as having no such events.
fn open_read_only(path: &Path) -> rusqlite::Result<(Connection, bool)> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let has_net = has_table(&conn, "net_events")?;
    Ok((conn, has_net))
}

/// Most rows [`exec_log`] reads at once: a long-lived sandbox's log is
/// read page by page, never whole into memory.
pub const EXEC_LOG_PAGE: i64 = 1024;

/// A command's start, signal or end: a row of `exec_events` other than
/// its stdio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRow {
    /// Order of recording.
    pub seq: i64,
    /// Time since the session started, µs.
    pub at_us: i64,
    /// The command's id within the session.
    pub exec_id: i64,
    /// `started`, `signal`, `exited` or `timed_out`.
    pub kind: String,
    /// The exit code or signal.
    pub value: Option<i64>,
    /// The command line of `started`.
    pub detail: Option<String>,
}

/// The commands' starts, signals and ends recorded after `after_seq`,
/// oldest first, at most [`EXEC_LOG_PAGE`] at a time (a database not yet
/// made: none).
pub fn exec_log(path: &Path, after_seq: i64) -> rusqlite::Result<Vec<ExecRow>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare(
        "SELECT seq, at_us, exec_id, kind, value, detail FROM exec_events
         WHERE seq > ?1 AND kind NOT IN ('stdin', 'stdout', 'stderr') ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map([after_seq, EXEC_LOG_PAGE], |row| {
        Ok(ExecRow {
            seq: row.get(0)?,
            at_us: row.get(1)?,
            exec_id: row.get(2)?,
            kind: row.get(3)?,
            value: row.get(4)?,
            detail: row.get(5)?,
        })
    })?;
    rows.collect()
}

/// A session's network activity, each kind oldest first.
#[derive(Debug, Clone, Default)]
pub struct NetworkLog {
    /// Connections and requests.
    pub requests: Vec<NetRow>,
    /// DNS queries.
    pub dns: Vec<DnsRow>,
    /// Calls to model APIs.
    pub model_calls: Vec<ModelRow>,
}

/// Reads the network activity of the database at `path`.
pub fn network_log(path: &Path) -> rusqlite::Result<NetworkLog> {
    network_log_since(path, &mut NetCursor::default(), None)
}

/// How many rows of each kind a reader of a growing log has read (the
/// tables only grow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCursor {
    /// Rows of `net_events`.
    pub requests: usize,
    /// Rows of `dns_events`.
    pub dns: usize,
    /// Rows of `model_calls`.
    pub model_calls: usize,
}

/// The network activity recorded after `cursor`, at most `page` rows of
/// each kind (all without one); moves the cursor past what it returns.
pub fn network_log_since(
    path: &Path,
    cursor: &mut NetCursor,
    page: Option<usize>,
) -> rusqlite::Result<NetworkLog> {
    let (conn, has_net) = open_read_only(path)?;
    if !has_net {
        return Ok(NetworkLog::default());
    }
    let model_calls = if has_table(&conn, "model_calls")? {
        read_after(
            &conn,
            "model_calls",
            &mut cursor.model_calls,
            page,
            model_row,
        )?
    } else {
        Vec::new()
    };
    Ok(NetworkLog {
        requests: read_after(&conn, "net_events", &mut cursor.requests, page, net_row)?,
        dns: read_after(&conn, "dns_events", &mut cursor.dns, page, dns_row)?,
        model_calls,
    })
}

/// The newest `limit` rows of each kind, and how many of each there are:
/// a long session's log is read a page at a time, never whole.
pub fn network_log_newest(path: &Path, limit: usize) -> rusqlite::Result<(NetworkLog, NetCursor)> {
    let (conn, has_net) = open_read_only(path)?;
    if !has_net {
        return Ok(Default::default());
    }
    let rows = |table: &str| -> rusqlite::Result<usize> {
        if !has_table(&conn, table)? {
            return Ok(0);
        }
        let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(0))
    };
    let totals = NetCursor {
        requests: rows("net_events")?,
        dns: rows("dns_events")?,
        model_calls: rows("model_calls")?,
    };
    drop(conn);
    let mut cursor = NetCursor {
        requests: totals.requests.saturating_sub(limit),
        dns: totals.dns.saturating_sub(limit),
        model_calls: totals.model_calls.saturating_sub(limit),
    };
    let log = network_log_since(path, &mut cursor, Some(limit))?;
    Ok((log, totals))
}

/// Up to `page` rows of `table` after the first `after`; moves `after`.
fn read_after<T>(
    conn: &Connection,
    table: &str,
    after: &mut usize,
    page: Option<usize>,
    from_row: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let limit = page.map_or(-1, |p| p as i64);
    let rows: Vec<T> = conn
        .prepare(&format!(
            "SELECT * FROM {table} ORDER BY seq LIMIT ?1 OFFSET ?2"
        ))?
        .query_map([limit, *after as i64], from_row)?
        .collect::<rusqlite::Result<_>>()?;
    *after += rows.len();
    Ok(rows)
}

fn count(row: &rusqlite::Row<'_>, column: &str) -> rusqlite::Result<u64> {
    Ok(row.get::<_, i64>(column)? as u64)
}

fn net_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NetRow> {
    let decision = match r.get::<_, String>("decision")?.as_str() {
        "allowed" => Verdict::Allowed,
        "error" => Verdict::Error,
        _ => Verdict::Denied,
    };
    let reported_by = match r
        .get::<_, Option<String>>("reported_by")
        .ok()
        .flatten()
        .as_deref()
    {
        Some("guest") => Reporter::Guest,
        _ => Reporter::Host,
    };
    Ok(NetRow {
        at_us: count(r, "at_us")?,
        event: NetEvent {
            reported_by,
            pid: r.get("pid")?,
            process: r.get("process")?,
            protocol: r.get("protocol")?,
            domain: r.get("domain")?,
            ip: r.get("ip")?,
            port: r.get("port")?,
            method: r.get("method")?,
            path: r.get("path")?,
            status: r.get("status")?,
            bytes_up: count(r, "bytes_up")?,
            bytes_down: count(r, "bytes_down")?,
            duration_us: r.get::<_, Option<i64>>("duration_us")?.map(|d| d as u64),
            decision,
            rule: r.get("rule")?,
            error: r.get("error")?,
            key_fingerprint: r.get("key_fingerprint")?,
            request_body: r.get("request_body")?,
            response_body: r.get("response_body")?,
        },
    })
}

fn dns_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DnsRow> {
    Ok(DnsRow {
        at_us: count(r, "at_us")?,
        query: DnsEvent {
            name: r.get("name")?,
            allowed: r.get::<_, String>("decision")? == "allowed",
            rule: r.get::<_, Option<String>>("rule")?.unwrap_or_default(),
            address: r.get("address")?,
        },
    })
}

fn model_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ModelRow> {
    Ok(ModelRow {
        at_us: count(r, "at_us")?,
        call: ModelCall {
            provider: r.get("provider")?,
            model: r.get("model")?,
            path: r.get("path")?,
            status: r.get("status")?,
            input_tokens: count(r, "input_tokens")?,
            output_tokens: count(r, "output_tokens")?,
            stop_reason: r.get("stop_reason")?,
            duration_us: count(r, "duration_us")?,
            cost_usd: r.get("cost_usd")?,
            key_fingerprint: r.get("key_fingerprint")?,
        },
    })
}

fn net_summary(conn: &Connection) -> rusqlite::Result<NetSummary> {
    let mut summary = conn.query_row(
        "SELECT count(*) FILTER (WHERE decision = 'allowed'),
                count(*) FILTER (WHERE decision = 'denied'),
                count(*) FILTER (WHERE decision = 'error'),
                coalesce(sum(bytes_up), 0), coalesce(sum(bytes_down), 0)
         FROM net_events",
        [],
        |r| {
            Ok(NetSummary {
                allowed: r.get::<_, i64>(0)? as u64,
                denied: r.get::<_, i64>(1)? as u64,
                errors: r.get::<_, i64>(2)? as u64,
                bytes_up: r.get::<_, i64>(3)? as u64,
                bytes_down: r.get::<_, i64>(4)? as u64,
                ..NetSummary::default()
            })
        },
    )?;
    (summary.dns_queries, summary.dns_denied) = conn.query_row(
        "SELECT count(*), count(*) FILTER (WHERE decision = 'denied') FROM dns_events",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )?;
    if has_table(conn, "model_calls")? {
        (
            summary.model_calls,
            summary.input_tokens,
            summary.output_tokens,
            summary.cost_usd,
        ) = conn.query_row(
            "SELECT count(*), coalesce(sum(input_tokens), 0),
                        coalesce(sum(output_tokens), 0), coalesce(sum(cost_usd), 0.0)
                 FROM model_calls",
            [],
            |r| {
                let n = |i| r.get::<_, i64>(i).map(|v| v as u64);
                Ok((n(0)?, n(1)?, n(2)?, r.get(3)?))
            },
        )?;
    }
    Ok(summary)
}

/// The network totals of the event database at `path` (read-only); all
/// zero when the session made none.
pub fn network_summary(path: &Path) -> rusqlite::Result<NetSummary> {
    let (conn, has_net) = open_read_only(path)?;
    if !has_net {
        return Ok(NetSummary::default());
    }
    net_summary(&conn)
}

/// Summarises the event database at `path` (read-only).
pub fn summarize(path: &Path) -> rusqlite::Result<EventSummary> {
    let (conn, has_net) = open_read_only(path)?;
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
            let count = KindCount {
                events: row.get::<_, i64>(1)? as u64,
                bytes: row.get::<_, i64>(2)? as u64,
            };
            Ok((row.get(0)?, count))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let network = if has_net {
        net_summary(&conn)?
    } else {
        NetSummary::default()
    };
    Ok(EventSummary {
        integrity,
        kinds,
        network,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STDIN: Event = Event::Exec {
        exec: 1,
        what: ExecEvent::Stdin { bytes: 1 },
    };

    #[test]
    fn every_kind_of_exec_event_is_accepted_by_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENTS_FILE);
        let (log, writer) = start(&path, Arc::default()).unwrap();
        let kinds = [
            ExecEvent::Started {
                command: "sleep 60".into(),
            },
            ExecEvent::Stdin { bytes: 1 },
            ExecEvent::Stdout { bytes: 1 },
            ExecEvent::Stderr { bytes: 1 },
            ExecEvent::Signal { signal: 9 },
            ExecEvent::Exited { code: 0 },
            ExecEvent::TimedOut,
        ];
        let count = kinds.len() as u64;
        for what in kinds {
            log.record(Event::Exec { exec: 1, what });
        }
        drop(log);
        assert_eq!(writer.finish().written, count);
        assert_eq!(summarize(&path).unwrap().kinds["timed_out"].events, 1);
    }

    #[test]
    fn events_are_written_in_order_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENTS_FILE);
        let (log, writer) = start(&path, Arc::default()).unwrap();
        log.record(Event::Exec {
            exec: 1,
            what: ExecEvent::Started {
                command: "cat".into(),
            },
        });
        for _ in 0..1000 {
            log.record(Event::Exec {
                exec: 1,
                what: ExecEvent::Stdout { bytes: 10 },
            });
        }
        log.record(Event::Exec {
            exec: 1,
            what: ExecEvent::Exited { code: 0 },
        });
        drop(log);
        let counts = writer.finish();
        assert_eq!(
            counts,
            EventCounts {
                written: 1002,
                lost: 0,
                over_budget: 0
            }
        );
        let summary = summarize(&path).unwrap();
        assert_eq!(summary.integrity, ["ok"]);
        assert_eq!(
            summary.kinds["stdout"],
            KindCount {
                events: 1000,
                bytes: 10_000
            }
        );
    }

    #[test]
    fn network_events_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENTS_FILE);
        let net = NetEvent {
            pid: Some(7),
            protocol: "https".into(),
            domain: Some("api.example.com".into()),
            port: 443,
            status: Some(200),
            bytes_up: 3,
            bytes_down: 5,
            duration_us: Some(9),
            decision: Verdict::Allowed,
            request_body: Some("{}".into()),
            ..NetEvent::default()
        };
        let dns = DnsEvent {
            name: "denied.example".into(),
            allowed: false,
            rule: "network.default_action".into(),
            address: None,
        };
        let call = ModelCall {
            provider: "anthropic".into(),
            model: Some("m".into()),
            path: None,
            status: Some(200),
            input_tokens: 25,
            output_tokens: 7,
            stop_reason: Some("end_turn".into()),
            duration_us: 11,
            cost_usd: Some(0.5),
            key_fingerprint: None,
        };
        let (log, writer) = start(&path, Arc::default()).unwrap();
        log.record(Event::Net(Box::new(net.clone())));
        log.record(Event::Dns(dns.clone()));
        log.record(Event::Model(Box::new(call.clone())));
        drop(log);
        assert_eq!(writer.finish().written, 3);
        let read = network_log(&path).unwrap();
        assert_eq!(read.requests.len(), 1);
        assert_eq!(read.requests[0].event, net);
        assert_eq!(read.dns[0].query, dns);
        assert_eq!(read.model_calls[0].call, call);
    }

    #[test]
    fn a_growing_network_log_is_read_page_by_page_from_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENTS_FILE);
        let mut cursor = NetCursor::default();
        assert!(network_log_since(&path, &mut cursor, Some(2)).is_err_and(|_| !path.exists()));
        let (log, writer) = start(&path, Arc::default()).unwrap();
        let request = |port| {
            Event::Net(Box::new(NetEvent {
                protocol: "https".into(),
                port,
                ..NetEvent::default()
            }))
        };
        for port in 1..=5 {
            log.record(request(port));
        }
        drop(log);
        writer.finish();
        let ports = |log: NetworkLog| {
            log.requests
                .iter()
                .map(|r| r.event.port)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ports(network_log_since(&path, &mut cursor, Some(2)).unwrap()),
            [1, 2]
        );
        assert_eq!(
            ports(network_log_since(&path, &mut cursor, Some(2)).unwrap()),
            [3, 4]
        );
        assert_eq!(
            ports(network_log_since(&path, &mut cursor, None).unwrap()),
            [5]
        );
        assert!(
            network_log_since(&path, &mut cursor, None)
                .unwrap()
                .requests
                .is_empty()
        );
        assert_eq!(cursor.requests, 5);
        let (newest, counts) = network_log_newest(&path, 2).unwrap();
        assert_eq!(ports(newest), [4, 5]);
        assert_eq!((counts.requests, counts.dns), (5, 0));
    }

    #[test]
    fn an_unwritable_database_counts_every_event_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer) =
            start(&dir.path().join("missing/dir/session.db"), Arc::default()).unwrap();
        for _ in 0..10 {
            log.record(STDIN);
        }
        drop(log);
        assert_eq!(
            writer.finish(),
            EventCounts {
                written: 0,
                lost: 10,
                over_budget: 0
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
            over_budget: Arc::default(),
            budget: Arc::default(),
            start: Instant::now(),
        };
        for _ in 0..5 {
            log.record(STDIN);
        }
        assert_eq!(lost.load(Ordering::Relaxed), 4);
        EventLog::disabled().record(STDIN);
    }

    #[test]
    fn a_spent_budget_keeps_the_database_within_it_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENTS_FILE);
        let budget = Arc::new(Budget::mib(1));
        let (log, writer) = start(&path, budget).unwrap();
        let long = NetEvent {
            protocol: "https".into(),
            path: Some(format!("/{}", "p".repeat(30_000))),
            decision: Verdict::Error,
            ..NetEvent::default()
        }
        .bounded();
        assert!(long.path.as_ref().unwrap().len() < MAX_PATH + 32);
        let short = Event::Dns(DnsEvent {
            name: "a.example.com".into(),
            allowed: true,
            rule: "network.allow: *.example.com".into(),
            address: Some("100.64.0.1".into()),
        });
        for _ in 0..5000 {
            log.record(short.clone());
        }
        for _ in 0..5000 {
            log.record(Event::Net(Box::new(long.clone())));
        }
        drop(log);
        let counts = writer.finish();
        assert!(
            counts.written > 5000 && counts.over_budget > 0,
            "{counts:?}"
        );
        assert_eq!(counts.written + counts.over_budget, 10_000);
        let size = std::fs::metadata(&path).unwrap().len()
            + std::fs::metadata(dir.path().join("session.db-wal")).map_or(0, |m| m.len());
        assert!(size <= 1024 * 1024 + 64 * 1024, "{size} bytes");
    }
}
