//! Schema migrations by `PRAGMA user_version`.
//!
//! Each database has an ordered list of migrations; migration N (1-based)
//! takes the schema from version N-1 to N. They run in one transaction, so a
//! crash leaves the old schema intact.

use rusqlite::Connection;

/// Brings `conn` to the latest version in `migrations`. Fails on a database
/// from a newer capsem, which this one must not touch.
pub fn migrate(conn: &mut Connection, migrations: &[&str]) -> rusqlite::Result<u32> {
    let latest = migrations.len() as u32;
    // Up to date (the common case): no write lock, so opening a database
    // never waits for a running session's writes.
    if version(conn, latest)? == latest {
        return Ok(latest);
    }
    // IMMEDIATE takes the write lock up front, so concurrent capsem
    // processes wait on the busy timeout instead of failing to upgrade a
    // read transaction; the version is read again under the lock.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let current = version(&tx, latest)?;
    if current == latest {
        return Ok(latest);
    }
    for sql in &migrations[current as usize..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", latest)?;
    tx.commit()?;
    Ok(latest)
}

/// The schema version; an error if it is newer than `latest`, which this
/// capsem must not touch.
fn version(conn: &Connection, latest: u32) -> rusqlite::Result<u32> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if current > latest {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(format!(
                "schema version {current} is newer than this capsem understands ({latest})"
            )),
        ));
    }
    Ok(current)
}

/// Opens with the settings every Capsem database uses: WAL (readers never
/// block the writer, a crash never corrupts), a busy timeout for concurrent
/// capsem processes, and `synchronous=NORMAL`, durable at each checkpoint.
/// The file is created private (0600); SQLite gives its WAL and shared-memory
/// files the same mode.
pub fn open(path: &std::path::Path) -> rusqlite::Result<Connection> {
    crate::fsutil::open_private(path).map_err(io_error)?;
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// An I/O failure around a database, as SQLite's "cannot open".
pub fn io_error(e: std::io::Error) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
        Some(e.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_in_order_and_refuse_newer_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let v1 = ["CREATE TABLE a (x INTEGER);"];
        let v2 = [
            "CREATE TABLE a (x INTEGER);",
            "ALTER TABLE a ADD COLUMN y TEXT;",
        ];
        assert_eq!(migrate(&mut open(&path).unwrap(), &v1).unwrap(), 1);
        assert_eq!(migrate(&mut open(&path).unwrap(), &v1).unwrap(), 1);
        let mut conn = open(&path).unwrap();
        assert_eq!(migrate(&mut conn, &v2).unwrap(), 2);
        conn.execute("INSERT INTO a (x, y) VALUES (1, 'z')", [])
            .unwrap();
        assert!(migrate(&mut open(&path).unwrap(), &v1).is_err());
    }

    #[test]
    fn a_failing_migration_leaves_the_old_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        migrate(&mut open(&path).unwrap(), &["CREATE TABLE a (x INTEGER);"]).unwrap();
        let broken = [
            "CREATE TABLE a (x INTEGER);",
            "CREATE TABLE b (y); SYNTAX ERROR;",
        ];
        assert!(migrate(&mut open(&path).unwrap(), &broken).is_err());
        let conn = open(&path).unwrap();
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 1);
        let b: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'b'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(b, 0);
    }
}
