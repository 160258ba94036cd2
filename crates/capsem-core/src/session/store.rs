//! The session index: `~/.capsem/sessions.db`, one row per run.
//!
//! A row is written as `running` before the VM starts and completed when
//! the run ends. A capsem process killed in between leaves `running` behind;
//! [`Store::repair`] turns such rows into `killed` once their process is
//! gone (checked by pid *and* process start time, so a recycled pid does not
//! keep a dead session alive).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::migrate;

/// The index file in Capsem's home.
pub const INDEX_FILE: &str = "sessions.db";

/// Index schema, one entry per version.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE sessions (
        id               TEXT PRIMARY KEY,
        started_at_ms    INTEGER NOT NULL,
        ended_at_ms      INTEGER,
        status           TEXT NOT NULL
                         CHECK (status IN ('running', 'exited', 'failed', 'killed', 'timed_out')),
        command          TEXT NOT NULL,
        exit_code        INTEGER,
        error            TEXT,
        accel            TEXT,
        cpus             INTEGER NOT NULL,
        memory_mib       INTEGER NOT NULL,
        kernel_blake3    TEXT NOT NULL,
        initramfs_blake3 TEXT NOT NULL,
        rootfs_blake3    TEXT NOT NULL,
        capsem_version   TEXT NOT NULL,
        host_pid         INTEGER NOT NULL,
        host_pid_start   INTEGER NOT NULL,
        phases_json      TEXT,
        event_count      INTEGER NOT NULL DEFAULT 0,
        lost_events      INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX sessions_by_start ON sessions (started_at_ms);",
    "ALTER TABLE sessions ADD COLUMN over_budget_events INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN transcript_cut_bytes INTEGER NOT NULL DEFAULT 0;",
];

/// The index could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("session database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// No session id starts with the prefix.
    #[error("no session matches '{0}'")]
    NotFound(String),
    /// Several do.
    #[error("'{prefix}' matches several sessions: {}", matches.join(", "))]
    Ambiguous {
        /// The prefix given.
        prefix: String,
        /// The ids it matches.
        matches: Vec<String>,
    },
}

/// How a session ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The VM is (believed to be) running.
    Running,
    /// The command exited (whatever its code).
    Exited,
    /// capsem failed to boot or lost the VM.
    Failed,
    /// The capsem process was killed.
    Killed,
    /// The command ran past its timeout.
    TimedOut,
}

impl Status {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Exited => "exited",
            Status::Failed => "failed",
            Status::Killed => "killed",
            Status::TimedOut => "timed_out",
        }
    }

    fn parse(text: &str) -> Status {
        match text {
            "running" => Status::Running,
            "exited" => Status::Exited,
            "failed" => Status::Failed,
            "timed_out" => Status::TimedOut,
            _ => Status::Killed,
        }
    }
}

/// What is known when a session starts.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Session id.
    pub id: String,
    /// Start, ms since the Unix epoch.
    pub started_at_ms: i64,
    /// The command, as the user would type it.
    pub command: String,
    /// vCPUs.
    pub cpus: u32,
    /// Guest RAM.
    pub memory_mib: u32,
    /// BLAKE3 of kernel, initramfs and rootfs.
    pub assets: [String; 3],
}

/// How a session ended.
#[derive(Debug, Clone)]
pub struct Ending<'a> {
    /// Final status.
    pub status: Status,
    /// The command's exit code, when it has one.
    pub exit_code: Option<i32>,
    /// capsem's error, when it failed.
    pub error: Option<&'a str>,
    /// Accelerator used, once known.
    pub accel: Option<&'a str>,
    /// Phase timings as JSON.
    pub phases_json: Option<&'a str>,
    /// Events written to the session's own database.
    pub event_count: u64,
    /// Events dropped because the writer could not keep up.
    pub lost_events: u64,
    /// Events not kept because the session's budget was spent.
    pub over_budget_events: u64,
    /// Terminal bytes not kept in the transcript for the same reason.
    pub transcript_cut_bytes: u64,
}

/// One row.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    /// Session id.
    pub id: String,
    /// Start, ms since the Unix epoch.
    pub started_at_ms: i64,
    /// End, ms since the Unix epoch.
    pub ended_at_ms: Option<i64>,
    /// Status.
    pub status: Status,
    /// The command.
    pub command: String,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// capsem's error.
    pub error: Option<String>,
    /// Accelerator.
    pub accel: Option<String>,
    /// vCPUs.
    pub cpus: u32,
    /// Guest RAM.
    pub memory_mib: u32,
    /// BLAKE3 of the kernel.
    pub kernel_blake3: String,
    /// BLAKE3 of the initramfs.
    pub initramfs_blake3: String,
    /// BLAKE3 of the rootfs.
    pub rootfs_blake3: String,
    /// capsem's version.
    pub capsem_version: String,
    /// Phase timings in ms since capsem started, by `NAME_ms`.
    pub phases: Option<std::collections::BTreeMap<String, f64>>,
    /// Events recorded.
    pub event_count: u64,
    /// Events lost.
    pub lost_events: u64,
    /// Events not kept: the session's budget was spent.
    pub over_budget_events: u64,
    /// Terminal bytes not kept in the transcript: the budget was spent.
    pub transcript_cut_bytes: u64,
}

impl SessionRow {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        let phases: Option<String> = row.get("phases_json")?;
        Ok(SessionRow {
            id: row.get("id")?,
            started_at_ms: row.get("started_at_ms")?,
            ended_at_ms: row.get("ended_at_ms")?,
            status: Status::parse(&row.get::<_, String>("status")?),
            command: row.get("command")?,
            exit_code: row.get("exit_code")?,
            error: row.get("error")?,
            accel: row.get("accel")?,
            cpus: row.get("cpus")?,
            memory_mib: row.get("memory_mib")?,
            kernel_blake3: row.get("kernel_blake3")?,
            initramfs_blake3: row.get("initramfs_blake3")?,
            rootfs_blake3: row.get("rootfs_blake3")?,
            capsem_version: row.get("capsem_version")?,
            phases: phases.as_deref().and_then(phases_ms),
            event_count: row.get::<_, i64>("event_count")? as u64,
            lost_events: row.get::<_, i64>("lost_events")? as u64,
            over_budget_events: row.get::<_, i64>("over_budget_events")? as u64,
            transcript_cut_bytes: row.get::<_, i64>("transcript_cut_bytes")? as u64,
        })
    }
}

/// Phase timings as `NAME_ms` numbers, from what any version stored:
/// numbers already, or `{"secs", "nanos"}` objects (before 0.2).
fn phases_ms(json: &str) -> Option<std::collections::BTreeMap<String, f64>> {
    let stored: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json).ok()?;
    let phases = stored
        .into_iter()
        .filter_map(|(name, value)| match value.as_f64() {
            Some(ms) => Some((name, ms)),
            None => {
                let ms = value["secs"].as_f64()? * 1e3 + value["nanos"].as_f64()? / 1e6;
                Some((format!("{name}_ms"), ms))
            }
        })
        .collect();
    Some(phases)
}

/// The result of [`Store::inspect`].
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// `PRAGMA integrity_check` output ("ok" when sound).
    pub integrity: Vec<String>,
    /// Schema version.
    pub schema_version: u32,
    /// Rows whose directory is missing.
    pub rows_without_dir: Vec<String>,
    /// Directories with no row.
    pub dirs_without_row: Vec<String>,
    /// Sessions per status.
    pub by_status: std::collections::BTreeMap<String, u64>,
}

impl Inspection {
    /// Whether anything is wrong.
    pub fn is_ok(&self) -> bool {
        self.integrity == ["ok"]
            && self.rows_without_dir.is_empty()
            && self.dirs_without_row.is_empty()
    }
}

/// The open index.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    sessions_dir: PathBuf,
}

impl Store {
    /// Opens (creating or migrating) the index in `home`.
    pub fn open(home: &Path) -> Result<Store, StoreError> {
        let path = home.join(INDEX_FILE);
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        crate::fsutil::create_private_dir(home).map_err(|e| sql(migrate::io_error(e)))?;
        let mut conn = migrate::open(&path).map_err(sql)?;
        migrate::migrate(&mut conn, MIGRATIONS).map_err(sql)?;
        Ok(Store {
            conn,
            sessions_dir: home.join("sessions"),
            path,
        })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Records a starting session, owned by this process.
    pub fn insert(&self, new: &NewSession) -> Result<(), StoreError> {
        let (pid, start) = this_process();
        self.conn
            .execute(
                "INSERT INTO sessions (id, started_at_ms, status, command, cpus, memory_mib,
                    kernel_blake3, initramfs_blake3, rootfs_blake3, capsem_version,
                    host_pid, host_pid_start)
                 VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    new.id,
                    new.started_at_ms,
                    new.command,
                    new.cpus,
                    new.memory_mib,
                    new.assets[0],
                    new.assets[1],
                    new.assets[2],
                    env!("CARGO_PKG_VERSION"),
                    pid,
                    start
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Completes a session's row.
    pub fn finish(&self, id: &str, end: &Ending<'_>) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE sessions SET ended_at_ms = ?2, status = ?3, exit_code = ?4, error = ?5,
                    accel = ?6, phases_json = ?7, event_count = ?8, lost_events = ?9,
                    over_budget_events = ?10, transcript_cut_bytes = ?11
                 WHERE id = ?1",
                params![
                    id,
                    now_ms(),
                    end.status.as_str(),
                    end.exit_code,
                    end.error,
                    end.accel,
                    end.phases_json,
                    end.event_count as i64,
                    end.lost_events as i64,
                    end.over_budget_events as i64,
                    end.transcript_cut_bytes as i64
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Marks `running` sessions whose capsem process is gone as `killed`;
    /// returns how many.
    pub fn repair(&self) -> Result<usize, StoreError> {
        let running: Vec<(String, i64, i64)> = self.query_rows(
            "SELECT id, host_pid, host_pid_start FROM sessions WHERE status = 'running'",
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        let mut repaired = 0;
        for (id, pid, start) in running {
            if process_start(pid) == Some(start) {
                continue;
            }
            let ended = last_change(&self.sessions_dir.join(&id)).unwrap_or_else(now_ms);
            repaired += self
                .conn
                .execute(
                    "UPDATE sessions SET status = 'killed', ended_at_ms = ?2,
                        error = 'the capsem process ended without recording the outcome'
                     WHERE id = ?1 AND status = 'running'",
                    params![id, ended],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(repaired)
    }

    fn query_rows<T>(
        &self,
        sql: &str,
        map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        stmt.query_map([], map)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<T>>>())
            .map_err(|e| self.err(e))
    }

    /// The newest `limit` sessions, newest first.
    pub fn list(&self, limit: usize) -> Result<Vec<SessionRow>, StoreError> {
        // LIMIT -1 is SQLite's "no limit".
        let limit = i64::try_from(limit).unwrap_or(-1);
        let sql = format!("SELECT * FROM sessions ORDER BY started_at_ms DESC, id LIMIT {limit}");
        self.query_rows(&sql, SessionRow::from_row)
    }

    /// The full id of the one session starting with `prefix`.
    pub fn resolve(&self, prefix: &str) -> Result<String, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM sessions WHERE substr(id, 1, length(?1)) = ?1 LIMIT 10")
            .map_err(|e| self.err(e))?;
        let matches = stmt
            .query_map([prefix], |row| row.get::<_, String>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        match matches.as_slice() {
            [] => Err(StoreError::NotFound(prefix.to_owned())),
            [one] => Ok(one.clone()),
            _ if prefix.is_empty() => Err(StoreError::NotFound(prefix.to_owned())),
            _ => Err(StoreError::Ambiguous {
                prefix: prefix.to_owned(),
                matches,
            }),
        }
    }

    /// One session by full id.
    pub fn get(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        self.conn
            .query_row(
                "SELECT * FROM sessions WHERE id = ?1",
                [id],
                SessionRow::from_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The finished sessions that [`Store::prune`] would delete: those
    /// started longer ago than `older_than`, and all but the newest `keep`.
    pub fn doomed(
        &self,
        older_than: Option<Duration>,
        keep: Option<usize>,
    ) -> Result<Vec<String>, StoreError> {
        let mut doomed: Vec<String> = Vec::new();
        if let Some(age) = older_than {
            let cutoff = now_ms() - age.as_millis() as i64;
            doomed.extend(self.query_rows(
                &format!(
                    "SELECT id FROM sessions WHERE status != 'running' AND started_at_ms < {cutoff}"
                ),
                |row| row.get(0),
            )?);
        }
        if let Some(keep) = keep {
            doomed.extend(self.query_rows(
                &format!(
                    "SELECT id FROM sessions WHERE status != 'running'
                     ORDER BY started_at_ms DESC, id LIMIT -1 OFFSET {keep}"
                ),
                |row| row.get(0),
            )?);
        }
        doomed.sort();
        doomed.dedup();
        Ok(doomed)
    }

    /// Deletes the finished sessions [`Store::doomed`] names, rows and
    /// directories; returns their ids.
    pub fn prune(
        &self,
        older_than: Option<Duration>,
        keep: Option<usize>,
    ) -> Result<Vec<String>, StoreError> {
        let doomed = self.doomed(older_than, keep)?;
        for id in &doomed {
            // The row goes first: a crash in between leaves a stray
            // directory, which inspect reports, never a row without data.
            self.conn
                .execute("DELETE FROM sessions WHERE id = ?1", [id])
                .map_err(|e| self.err(e))?;
            let _ = fs::remove_dir_all(self.sessions_dir.join(id));
        }
        Ok(doomed)
    }

    /// Checks the index: SQLite's integrity check, the schema version, and
    /// rows and directories that have lost each other.
    pub fn inspect(&self) -> Result<Inspection, StoreError> {
        let integrity = self.query_rows("PRAGMA integrity_check", |row| row.get(0))?;
        let schema_version = self
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| self.err(e))?;
        let ids: Vec<String> = self.query_rows("SELECT id FROM sessions", |row| row.get(0))?;
        let rows_without_dir = ids
            .iter()
            .filter(|id| !self.sessions_dir.join(id).is_dir())
            .cloned()
            .collect();
        let dirs_without_row = fs::read_dir(&self.sessions_dir)
            .map(|dir| {
                dir.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| !ids.contains(name))
                    .collect()
            })
            .unwrap_or_default();
        let by_status = self
            .query_rows(
                "SELECT status, count(*) FROM sessions GROUP BY status ORDER BY status",
                |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)),
            )?
            .into_iter()
            .collect();
        Ok(Inspection {
            integrity,
            schema_version,
            rows_without_dir,
            dirs_without_row,
            by_status,
        })
    }

    /// The directory of a session.
    pub fn dir_of(&self, id: &str) -> PathBuf {
        self.sessions_dir.join(id)
    }
}

/// When anything in a session directory last changed (the running capsem
/// touches the directory every second, and its files grow while the VM
/// runs): when a killed run ended, give or take a second.
fn last_change(dir: &Path) -> Option<i64> {
    // The directory's own time is the running capsem's heartbeat.
    let own = fs::metadata(dir).ok()?.modified().ok();
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|entry| entry.metadata().ok()?.modified().ok())
        .chain(own)
        .max()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// This process's pid and start time.
fn this_process() -> (i64, i64) {
    let pid = i64::from(std::process::id());
    (pid, process_start(pid).unwrap_or(0))
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/PID/stat`); `None` when there is no such process or it is dead
/// and only waits to be reaped (a zombie: its parent, often an init that
/// reaps lazily, decides how long that lasts).
fn process_start(pid: i64) -> Option<i64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after its ')'.
    let mut fields = stat[stat.rfind(')')? + 2..].split_whitespace();
    if matches!(fields.next()?, "Z" | "X") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(id: &str, started_at_ms: i64) -> NewSession {
        NewSession {
            id: id.to_owned(),
            started_at_ms,
            command: "echo hi".to_owned(),
            cpus: 2,
            memory_mib: 1024,
            assets: ["k".into(), "i".into(), "r".into()],
        }
    }

    fn ended(status: Status) -> Ending<'static> {
        Ending {
            status,
            exit_code: Some(0),
            error: None,
            accel: Some("tcg"),
            phases_json: Some("{\"agent_ready\":1.5}"),
            event_count: 3,
            lost_events: 0,
            over_budget_events: 0,
            transcript_cut_bytes: 0,
        }
    }

    fn store_with(ids: &[(&str, i64)]) -> (tempfile::TempDir, Store) {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        for (id, at) in ids {
            store.insert(&new(id, *at)).unwrap();
            fs::create_dir_all(store.dir_of(id)).unwrap();
        }
        (home, store)
    }

    #[test]
    fn a_session_is_inserted_running_and_finished() {
        let (_home, store) = store_with(&[("abcd1234", 1000)]);
        assert_eq!(
            store.get("abcd1234").unwrap().unwrap().status,
            Status::Running
        );
        store.finish("abcd1234", &ended(Status::Exited)).unwrap();
        let row = store.get("abcd1234").unwrap().unwrap();
        assert_eq!(row.status, Status::Exited);
        assert_eq!(row.exit_code, Some(0));
        assert_eq!(row.event_count, 3);
        assert!(row.ended_at_ms.is_some());
        assert_eq!(row.phases.unwrap()["agent_ready"], 1.5);
    }

    #[test]
    fn prefixes_resolve_when_unambiguous() {
        let (_home, store) = store_with(&[("abcd1234", 1), ("abce5678", 2), ("ffff0000", 3)]);
        assert_eq!(store.resolve("abcd").unwrap(), "abcd1234");
        assert_eq!(store.resolve("ffff0000").unwrap(), "ffff0000");
        assert!(matches!(
            store.resolve("abc"),
            Err(StoreError::Ambiguous { .. })
        ));
        assert!(matches!(store.resolve("0"), Err(StoreError::NotFound(_))));
        assert!(matches!(store.resolve(""), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn a_dead_owner_makes_a_running_session_killed() {
        let (_home, store) = store_with(&[("live0000", 1), ("dead0000", 2)]);
        // Forge an owner that cannot exist.
        store
            .conn
            .execute(
                "UPDATE sessions SET host_pid = 999999999 WHERE id = 'dead0000'",
                [],
            )
            .unwrap();
        assert_eq!(store.repair().unwrap(), 1);
        assert_eq!(
            store.get("dead0000").unwrap().unwrap().status,
            Status::Killed
        );
        assert_eq!(
            store.get("live0000").unwrap().unwrap().status,
            Status::Running
        );
        // A recycled pid with another start time is dead too.
        store
            .conn
            .execute(
                "UPDATE sessions SET host_pid_start = 1 WHERE id = 'live0000'",
                [],
            )
            .unwrap();
        assert_eq!(store.repair().unwrap(), 1);
    }

    #[test]
    fn prune_by_age_and_count_spares_running_sessions() {
        let now = now_ms();
        let day = 86_400_000;
        let (_home, store) = store_with(&[
            ("old00000", now - 40 * day),
            ("mid00000", now - 10 * day),
            ("new00000", now - 1000),
            ("run00000", now - 50 * day),
        ]);
        for id in ["old00000", "mid00000", "new00000"] {
            store.finish(id, &ended(Status::Exited)).unwrap();
        }
        let gone = store
            .prune(Some(Duration::from_secs(30 * 86_400)), None)
            .unwrap();
        assert_eq!(gone, ["old00000"]);
        assert!(!store.dir_of("old00000").exists());
        let gone = store.prune(None, Some(1)).unwrap();
        assert_eq!(gone, ["mid00000"]);
        let left: Vec<String> = store.list(10).unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(left, ["new00000", "run00000"]);
    }

    #[test]
    fn inspect_finds_lost_rows_and_stray_dirs() {
        let (_home, store) = store_with(&[("aaaa0000", 1), ("bbbb0000", 2)]);
        assert!(store.inspect().unwrap().is_ok());
        fs::remove_dir_all(store.dir_of("aaaa0000")).unwrap();
        fs::create_dir_all(store.dir_of("cccc0000")).unwrap();
        let report = store.inspect().unwrap();
        assert!(!report.is_ok());
        assert_eq!(report.rows_without_dir, ["aaaa0000"]);
        assert_eq!(report.dirs_without_row, ["cccc0000"]);
        assert_eq!(report.schema_version, MIGRATIONS.len() as u32);
    }

    #[test]
    fn this_process_is_alive() {
        let (pid, start) = this_process();
        assert_eq!(process_start(pid), Some(start));
        assert_eq!(process_start(999_999_999), None);
    }

    #[test]
    fn a_dead_process_not_yet_reaped_has_no_start() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i64::from(child.id());
        let stat = || fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !stat().contains(") Z ") {
            assert!(std::time::Instant::now() < deadline, "{}", stat());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(process_start(pid), None);
        child.wait().unwrap();
    }
}
