//! `cargo xtask update-fixture`: a scrubbed copy of a real session index,
//! for the migration tests (and later the UI's demo mode).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::workspace;

#[derive(Debug, Args)]
pub struct FixtureArgs {
    /// The capsem home to copy from (default: $CAPSEM_HOME or ~/.capsem).
    #[arg(long)]
    from: Option<PathBuf>,
}

/// Commands, errors and host identities are replaced: a fixture must not
/// carry what a user ran.
const SCRUB: &str = "
    UPDATE sessions SET
        command = 'demo command ' || rowid,
        error = CASE WHEN error IS NULL THEN NULL ELSE 'scrubbed error' END,
        host_pid = 0,
        host_pid_start = 0;
";

pub fn run(args: &FixtureArgs) -> Result<()> {
    let home = args
        .from
        .clone()
        .unwrap_or_else(capsem_core::paths::capsem_home);
    let index = home.join(capsem_core::session::store::INDEX_FILE);
    if !index.is_file() {
        bail!(
            "{} does not exist: run capsem a few times first",
            index.display()
        );
    }
    let scratch = std::env::temp_dir().join(format!("capsem-fixture-{}.db", std::process::id()));
    std::fs::copy(&index, &scratch).with_context(|| format!("copying {}", index.display()))?;
    let conn = rusqlite::Connection::open(&scratch)?;
    conn.execute_batch(SCRUB)?;
    let version: u32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    std::fs::create_dir_all(fixtures())?;
    let out = fixtures().join(format!("sessions-v{version}.db"));
    let _ = std::fs::remove_file(&out);
    conn.execute("VACUUM INTO ?1", [out.to_string_lossy()])?;
    drop(conn);
    std::fs::remove_file(&scratch)?;
    eprintln!("xtask: wrote {}", out.display());
    Ok(())
}

fn fixtures() -> PathBuf {
    workspace().join("crates/capsem-core/tests/fixtures")
}
