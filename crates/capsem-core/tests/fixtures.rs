//! Databases written by earlier versions open, migrate and read back.

use capsem_core::session::store::{INDEX_FILE, Status, Store};

#[test]
fn the_v1_session_index_opens_and_reads_back() {
    let home = tempfile::tempdir().unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sessions-v1.db");
    std::fs::copy(fixture, home.path().join(INDEX_FILE)).unwrap();
    let store = Store::open(home.path()).unwrap();
    let rows = store.list(100).unwrap();
    assert_eq!(rows.len(), 7);
    let statuses: Vec<Status> = rows.iter().map(|r| r.status).collect();
    for status in [
        Status::Exited,
        Status::TimedOut,
        Status::Failed,
        Status::Killed,
    ] {
        assert!(
            statuses.contains(&status),
            "{status:?} missing from {statuses:?}"
        );
    }
    assert!(rows.iter().any(|r| r.exit_code == Some(3)));
    assert!(rows.iter().all(|r| r.command.starts_with("demo command")));
    let report = store.inspect().unwrap();
    assert_eq!(report.integrity, ["ok"]);
    assert_eq!(report.schema_version, 2, "migrated from version 1");
    assert!(
        rows.iter()
            .all(|r| r.over_budget_events == 0 && r.transcript_cut_bytes == 0)
    );
    // The fixture has rows but no session directories.
    assert_eq!(report.rows_without_dir.len(), 7);
    // Prefix lookup works on old rows too.
    let id = store.resolve(&rows[0].id[..6]).unwrap();
    assert_eq!(id, rows[0].id);
}
