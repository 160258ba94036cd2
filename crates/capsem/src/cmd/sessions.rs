//! `capsem sessions`: what ran, when, and how it ended.

use std::path::Path;
use std::time::Duration;

use capsem_core::paths;
use capsem_core::session::events::{self, EVENTS_FILE};
use capsem_core::session::store::{Inspection, SessionRow, Status, Store};
use capsem_core::session::transcript::{self, Record, TRANSCRIPT_FILE};
use capsem_core::settings::Settings;
use capsem_core::text::visible;
use serde_json::json;

use crate::cli::SessionsAction;
use crate::exit::Failure;

/// Boot phases in the order they happen.
const PHASES: [&str; 7] = [
    "assets_verified",
    "vm_spawned",
    "kernel_started",
    "init_started",
    "agent_ready",
    "command_done",
    "vm_gone",
];

/// Runs a `sessions` subcommand; returns the exit code.
pub fn run(action: Option<SessionsAction>, json: bool, limit: usize) -> Result<i32, Failure> {
    let store = match Store::open(&paths::capsem_home()) {
        Ok(store) => store,
        // A database too damaged to open is what inspect exists to report.
        Err(e) if matches!(action, Some(SessionsAction::Inspect { .. })) => {
            println!("{e}");
            println!("PROBLEMS FOUND");
            return Ok(1);
        }
        Err(e) => {
            return Err(Failure::new(e)
                .hint("`capsem sessions inspect` checks it; move the file away to start afresh"));
        }
    };
    // Inspect reports what it finds; everything else first repairs the
    // sessions of capsem processes that died.
    let repaired = || store.repair().map(drop).map_err(Failure::new);
    match action {
        None => repaired().and_then(|()| list(&store, json, limit)),
        Some(SessionsAction::Show { id, json }) => {
            repaired().and_then(|()| show(&store, &id, json))
        }
        Some(SessionsAction::Inspect { id }) => inspect(&store, id.as_deref()),
        Some(SessionsAction::Replay { id, timing }) => replay(&store, &id, timing),
        Some(SessionsAction::Prune { older_than, keep }) => {
            repaired().and_then(|()| prune(&store, older_than, keep))
        }
    }
}

fn list(store: &Store, json: bool, limit: usize) -> Result<i32, Failure> {
    let rows = store.list(limit).map_err(Failure::new)?;
    if json {
        for row in &rows {
            println!("{}", json!({ "type": "session", "data": row }));
        }
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no sessions yet");
        return Ok(0);
    }
    println!(
        "{:<8}  {:<19}  {:>9}  {:<9}  {:>4}  COMMAND",
        "ID", "STARTED", "DURATION", "STATUS", "EXIT"
    );
    for row in &rows {
        println!(
            "{:<8}  {:<19}  {:>9}  {:<9}  {:>4}  {}",
            row.id,
            local_time(row.started_at_ms),
            duration(row),
            row.status.as_str(),
            row.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            one_line(&row.command, 60)
        );
    }
    Ok(0)
}

fn show(store: &Store, prefix: &str, json: bool) -> Result<i32, Failure> {
    let id = store.resolve(prefix).map_err(Failure::new)?;
    let row = store
        .get(&id)
        .map_err(Failure::new)?
        .ok_or_else(|| Failure::new(format!("session {id} vanished")))?;
    let dir = store.dir_of(&id);
    let summary = events::summarize(&dir.join(EVENTS_FILE)).ok();
    if json {
        let data = json!({
            "session": row,
            "dir": dir,
            "boot_log": dir.join("boot.log"),
            "qemu_log": dir.join("qemu.log"),
            "events": summary,
        });
        println!("{}", json!({ "type": "session", "data": data }));
        return Ok(0);
    }
    let field = |name: &str, value: String| println!("{name:<9} {value}");
    field("session", row.id.clone());
    field("command", visible(&row.command).into_owned());
    let outcome = match (row.status, row.exit_code) {
        (Status::Exited, Some(code)) => format!("exited with {code}"),
        (status, _) => status.as_str().to_owned(),
    };
    field("status", outcome);
    field("started", local_time(row.started_at_ms));
    if let Some(end) = row.ended_at_ms {
        field("ended", format!("{} ({})", local_time(end), duration(&row)));
    }
    field(
        "vm",
        format!(
            "{}, {} vCPUs, {} MiB",
            row.accel.as_deref().unwrap_or("?"),
            row.cpus,
            row.memory_mib
        ),
    );
    field("kernel", row.kernel_blake3.clone());
    field("initramfs", row.initramfs_blake3.clone());
    field("rootfs", row.rootfs_blake3.clone());
    field("capsem", row.capsem_version.clone());
    if let Some(phases) = &row.phases {
        println!("phases (ms since capsem started):");
        for name in PHASES {
            if let Some(ms) = duration_ms(&phases[name]) {
                println!("  {:<16} {ms:>9.1}", name.replace('_', " "));
            }
        }
        if let Some(ms) = duration_ms(&phases["recording"]) {
            println!("recording {ms:.1} ms on the critical path");
        }
    }
    println!(
        "events    {} recorded, {} lost",
        row.event_count, row.lost_events
    );
    if row.over_budget_events > 0 || row.transcript_cut_bytes > 0 {
        println!(
            "budget    sessions.max_session_mib reached: {} events and {} transcript bytes not kept",
            row.over_budget_events, row.transcript_cut_bytes
        );
    }
    if let Some(summary) = &summary {
        for (kind, count, bytes) in &summary.kinds {
            println!("  {kind:<8} {count:>8} events {bytes:>12} bytes");
        }
        let net = &summary.network;
        println!(
            "network   {} allowed, {} denied, {} failed; {} bytes up, {} down; \
             {} DNS queries ({} refused)",
            net.allowed,
            net.denied,
            net.errors,
            net.bytes_up,
            net.bytes_down,
            net.dns_queries,
            net.dns_denied
        );
        if net.model_calls > 0 {
            println!(
                "models    {} calls, {} input and {} output tokens, ~${:.4}",
                net.model_calls, net.input_tokens, net.output_tokens, net.cost_usd
            );
        }
    }
    if let Some(error) = &row.error {
        // The error may quote the guest's console; its lines stay lines.
        let lines: Vec<_> = error.lines().map(visible).collect();
        field("error", lines.join("\n"));
    }
    field("boot log", dir.join("boot.log").display().to_string());
    field("qemu log", dir.join("qemu.log").display().to_string());
    field("events", dir.join(EVENTS_FILE).display().to_string());
    Ok(0)
}

/// Prints what is wrong, if anything; the exit code is 1 when something is.
fn inspect(store: &Store, prefix: Option<&str>) -> Result<i32, Failure> {
    let mut ok = match store.inspect() {
        Ok(report) => {
            print_inspection(&report);
            report.is_ok()
        }
        Err(e) => {
            println!("{e}");
            false
        }
    };
    if let Some(prefix) = prefix {
        let id = store.resolve(prefix).map_err(Failure::new)?;
        ok &= inspect_events(&store.dir_of(&id).join(EVENTS_FILE));
    }
    println!("{}", if ok { "ok" } else { "PROBLEMS FOUND" });
    Ok(if ok { 0 } else { 1 })
}

fn print_inspection(report: &Inspection) {
    println!("index integrity: {}", report.integrity.join("; "));
    println!("schema version:  {}", report.schema_version);
    let counts: Vec<String> = report
        .by_status
        .iter()
        .map(|(status, n)| format!("{status} {n}"))
        .collect();
    println!(
        "sessions:        {}",
        if counts.is_empty() {
            "none".into()
        } else {
            counts.join(", ")
        }
    );
    for id in &report.rows_without_dir {
        println!("row without directory: {id}");
    }
    for id in &report.dirs_without_row {
        println!("directory without row: {id}");
    }
}

/// Checks one session's event database; prints its summary.
fn inspect_events(path: &Path) -> bool {
    match events::summarize(path) {
        Ok(summary) => {
            println!("events integrity: {}", summary.integrity.join("; "));
            for (kind, count, bytes) in &summary.kinds {
                println!("  {kind:<8} {count:>8} events {bytes:>12} bytes");
            }
            summary.integrity == ["ok"]
        }
        Err(e) => {
            println!("events database {}: {e}", path.display());
            false
        }
    }
}

/// Writes the output of a terminal session to stdout, optionally paced as
/// it was produced.
fn replay(store: &Store, prefix: &str, timing: bool) -> Result<i32, Failure> {
    use std::io::Write;
    let id = store.resolve(prefix).map_err(Failure::new)?;
    let path = store.dir_of(&id).join(TRANSCRIPT_FILE);
    let file = std::fs::File::open(&path).map_err(|e| {
        Failure::new(format!(
            "session {id} has no transcript ({}): {e}",
            path.display()
        ))
        .hint("only terminal sessions (capsem shell, run -t) have one")
    })?;
    let reading = |e| Failure::new(format!("reading {}: {e}", path.display()));
    let records = transcript::Reader::new(file).map_err(reading)?;
    let mut out = std::io::stdout().lock();
    let mut shown = Duration::ZERO;
    for record in records {
        let (at, record) = record.map_err(reading)?;
        match record {
            Record::Output(bytes) => {
                if timing {
                    std::thread::sleep(at.saturating_sub(shown));
                    shown = at;
                }
                out.write_all(&bytes)
                    .and_then(|()| out.flush())
                    .map_err(Failure::new)?;
            }
            Record::Cut => {
                out.flush().map_err(Failure::new)?;
                eprintln!(
                    "\r\ncapsem: the transcript stops here: the session reached sessions.max_session_mib"
                );
            }
            Record::Input(_) | Record::Resize { .. } => {}
        }
    }
    Ok(0)
}

fn prune(store: &Store, older_than: Option<Duration>, keep: Option<usize>) -> Result<i32, Failure> {
    let (older_than, keep) = if older_than.is_none() && keep.is_none() {
        let retention = Settings::load().map_err(Failure::new)?.sessions();
        (
            (retention.retention_days > 0)
                .then(|| Duration::from_secs(u64::from(retention.retention_days) * 86_400)),
            (retention.max_count > 0).then_some(retention.max_count as usize),
        )
    } else {
        (older_than, keep)
    };
    let gone = store.prune(older_than, keep).map_err(Failure::new)?;
    println!(
        "pruned {} session{}",
        gone.len(),
        if gone.len() == 1 { "" } else { "s" }
    );
    Ok(0)
}

/// A Unix time in ms as local wall-clock time.
fn local_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| {
            t.to_zoned_datetime(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|_| "?".into())
}

fn duration(row: &SessionRow) -> String {
    match row.ended_at_ms {
        Some(end) => format!("{:.1}s", (end - row.started_at_ms) as f64 / 1000.0),
        None => "-".into(),
    }
}

/// A serialized `Duration` (`{"secs", "nanos"}`) in ms.
fn duration_ms(value: &serde_json::Value) -> Option<f64> {
    Some(value["secs"].as_f64()? * 1e3 + value["nanos"].as_f64()? / 1e6)
}

/// The first line of `text`, at most `width` characters.
fn one_line(text: &str, width: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    let clean = visible(line);
    if clean.chars().count() > width || text.lines().count() > 1 {
        let cut: String = clean.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        clean.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_and_multiline_commands_are_cut_and_cleaned() {
        assert_eq!(one_line("ls", 10), "ls");
        assert_eq!(one_line("echo 0123456789", 10), "echo 0123…");
        assert_eq!(one_line("a\nb", 10), "a…");
        assert_eq!(one_line("a\x1b[31mb", 12), "a\\x1b[31mb");
    }

    #[test]
    fn serialized_durations_read_back_in_ms() {
        assert_eq!(
            duration_ms(&json!({"secs": 1, "nanos": 500_000_000})),
            Some(1500.0)
        );
        assert_eq!(duration_ms(&json!(null)), None);
    }
}
