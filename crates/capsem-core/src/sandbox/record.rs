//! Recording one run as a session, off the run's critical path.
//!
//! The index row is written by a blocking task while the VM boots, and
//! events go to their writer thread; only the final update waits, after the
//! VM is gone. Recording problems never stop a run: they become notices and
//! the run goes on unrecorded.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use std::sync::Arc;

use super::Phases;
use crate::session::Budget;
use crate::session::events::{self, EventCounts, EventLog, EventWriter};
use crate::session::store::{Ending, NewSession, Status, Store};
use crate::settings::SessionSettings;

/// Where and what to record.
pub struct RecordSpec {
    /// Capsem's home (holds the index).
    pub home: PathBuf,
    /// Retention applied before inserting.
    pub retention: SessionSettings,
    /// The row to insert.
    pub row: NewSession,
    /// The session's event database.
    pub events_db: PathBuf,
}

/// A session being recorded.
pub struct Recorder {
    index: JoinHandle<(Option<Store>, Vec<String>)>,
    /// Keeps the session directory's time fresh while the run lives.
    heartbeat: JoinHandle<()>,
    budget: Arc<Budget>,
    events: EventLog,
    writer: Option<EventWriter>,
    id: String,
    on_path: Duration,
}

impl Recorder {
    /// Starts recording; must run inside the tokio runtime.
    pub fn start(spec: RecordSpec) -> (Recorder, Vec<String>) {
        let started = Instant::now();
        let id = spec.row.id.clone();
        let budget = Arc::new(Budget::mib(spec.retention.max_session_mib));
        let (events, writer, notices) = match events::start(&spec.events_db, budget.clone()) {
            Ok((log, writer)) => (log, Some(writer), Vec::new()),
            Err(e) => (
                EventLog::disabled(),
                None,
                vec![format!("this session's events are not recorded: {e}")],
            ),
        };
        let dir = spec
            .events_db
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        let heartbeat = tokio::spawn(heartbeat(dir));
        let index = tokio::task::spawn_blocking(move || open_and_insert(&spec));
        let recorder = Recorder {
            index,
            heartbeat,
            budget,
            events,
            writer,
            id,
            on_path: started.elapsed(),
        };
        (recorder, notices)
    }

    /// Where the run records its events.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// The session's disk budget, which its transcript draws on too.
    pub fn budget(&self) -> Arc<Budget> {
        self.budget.clone()
    }

    /// Completes the session's row with `end`, whose `phases.recording` is
    /// set to the time recording cost on the run's critical path (all but
    /// the final update itself). Returns notices for the user and the
    /// phases as recorded.
    pub async fn finish(self, mut end: FinalState) -> (Vec<String>, Phases) {
        let started = Instant::now();
        let Recorder {
            index,
            heartbeat,
            budget: _,
            events,
            writer,
            id,
            on_path,
        } = self;
        heartbeat.abort();
        drop(events);
        let (store, mut notices) = index.await.unwrap_or((None, Vec::new()));
        let finished = tokio::task::spawn_blocking(move || {
            let counts = writer.map_or(EventCounts::default(), EventWriter::finish);
            end.phases.recording = Some(on_path + started.elapsed());
            let phases_json = serde_json::to_string(&end.phases).ok();
            let ending = Ending {
                status: end.status,
                exit_code: end.exit_code,
                error: end.error.as_deref(),
                accel: Some(end.accel),
                phases_json: phases_json.as_deref(),
                event_count: counts.written,
                lost_events: counts.lost,
                over_budget_events: counts.over_budget,
                transcript_cut_bytes: end.transcript_cut_bytes,
            };
            let notice = store.and_then(|store| {
                store
                    .finish(&id, &ending)
                    .err()
                    .map(|e| format!("could not record the end of session {id}: {e}"))
            });
            (notice, end.phases)
        })
        .await;
        match finished {
            Ok((notice, phases)) => {
                notices.extend(notice);
                (notices, phases)
            }
            Err(_) => (notices, Phases::default()),
        }
    }
}

/// How often a running session says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Touches the session directory every [`HEARTBEAT`], so that when this
/// capsem is killed, [`Store::repair`] dates the session's end from the
/// last beat, not from the last file the run happened to write.
async fn heartbeat(dir: PathBuf) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    loop {
        ticks.tick().await;
        let touched =
            std::fs::File::open(&dir).and_then(|d| d.set_modified(std::time::SystemTime::now()));
        if touched.is_err() {
            return;
        }
    }
}

/// How a run ended, as recorded.
pub struct FinalState {
    /// Final status.
    pub status: Status,
    /// The command's exit code.
    pub exit_code: Option<i32>,
    /// capsem's error.
    pub error: Option<String>,
    /// Accelerator name.
    pub accel: &'static str,
    /// Phase timings.
    pub phases: Phases,
    /// Terminal bytes the transcript could not keep.
    pub transcript_cut_bytes: u64,
}

/// Opens the index, repairs sessions of dead capsem processes, applies
/// retention, and inserts this run's row.
fn open_and_insert(spec: &RecordSpec) -> (Option<Store>, Vec<String>) {
    let store = match Store::open(&spec.home) {
        Ok(store) => store,
        Err(e) => return (None, vec![format!("sessions are not recorded: {e}")]),
    };
    let mut notices = Vec::new();
    let retention = &spec.retention;
    let older_than = (retention.retention_days > 0)
        .then(|| Duration::from_secs(u64::from(retention.retention_days) * 86_400));
    let keep = (retention.max_count > 0).then_some(retention.max_count as usize);
    if let Err(e) = store.repair().and_then(|_| store.prune(older_than, keep)) {
        notices.push(format!("session maintenance failed: {e}"));
    }
    if let Err(e) = store.insert(&spec.row) {
        notices.push(format!("this session is not recorded: {e}"));
    }
    (Some(store), notices)
}
