//! `capsem sessions`: what ran, when, and how it ended.

use std::time::Duration;

use capsem_core::paths;
use capsem_core::session::events::{self, EVENTS_FILE};
use capsem_core::session::store::{Inspection, SessionRow, Status, Store};
use capsem_core::session::transcript::{self, Record, TRANSCRIPT_FILE};
use capsem_core::settings::Settings;
use capsem_core::text::visible;
use capsem_core::workspace::Stored;
use serde_json::json;

use crate::cli::{ListArgs, SessionsAction};
use crate::exit::Failure;
use crate::out::outln;
use crate::terminal;

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
pub fn run(action: Option<SessionsAction>, listing: ListArgs) -> Result<i32, Failure> {
    let store = match Store::open(&paths::capsem_home()) {
        Ok(store) => store,
        // A database too damaged to open is what inspect exists to report.
        Err(e) if matches!(action, Some(SessionsAction::Inspect { .. })) => {
            outln!("{e}");
            outln!("PROBLEMS FOUND");
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
        None => repaired().and_then(|()| list(&store, &listing)),
        Some(SessionsAction::List(listing)) => repaired().and_then(|()| list(&store, &listing)),
        Some(SessionsAction::Show { id, json }) => {
            repaired().and_then(|()| show(&store, &id, json))
        }
        Some(SessionsAction::Inspect { id, json }) => inspect(&store, id.as_deref(), json),
        Some(SessionsAction::Replay { id, timing }) => replay(&store, &id, timing),
        Some(SessionsAction::Prune {
            older_than,
            keep,
            dry_run,
            yes,
        }) => repaired().and_then(|()| {
            prune(
                &store,
                Prune {
                    older_than,
                    keep,
                    dry_run,
                    yes,
                },
            )
        }),
    }
}

fn list(store: &Store, listing: &ListArgs) -> Result<i32, Failure> {
    // -n 0 lists them all, as 0 means no limit in every setting.
    let limit = if listing.limit == 0 {
        usize::MAX
    } else {
        listing.limit
    };
    let rows = store.list(limit).map_err(Failure::new)?;
    if listing.json {
        for row in &rows {
            outln!("{}", json!({ "type": "session", "data": row }));
        }
        return Ok(0);
    }
    if rows.is_empty() {
        outln!("no sessions yet");
        return Ok(0);
    }
    outln!(
        "{:<8}  {:<19}  {:>9}  {:<9}  {:>4}  COMMAND",
        "ID",
        "STARTED",
        "DURATION",
        "STATUS",
        "EXIT"
    );
    for row in &rows {
        outln!(
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
    if json {
        let data = detail(store, &row);
        outln!("{}", json!({ "type": "session_detail", "data": data }));
        return Ok(0);
    }
    let dir = store.dir_of(&id);
    let summary = events::summarize(&dir.join(EVENTS_FILE)).ok();
    let workspace = Stored::new(&dir);
    let mounted = workspace.mounted();
    let field = |name: &str, value: String| outln!("{name:<9} {value}");
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
        outln!("phases (ms since capsem started):");
        for name in PHASES {
            if let Some(ms) = phases.get(&format!("{name}_ms")) {
                outln!("  {:<16} {ms:>9.1}", name.replace('_', " "));
            }
        }
        if let Some(ms) = phases.get("recording_ms") {
            outln!("recording {ms:.1} ms on the critical path");
        }
    }
    outln!(
        "events    {} recorded, {} lost",
        row.event_count,
        row.lost_events
    );
    if row.over_budget_events > 0 || row.transcript_cut_bytes > 0 {
        outln!(
            "budget    sessions.max_session_mib reached: {} events and {} transcript bytes not kept",
            row.over_budget_events,
            row.transcript_cut_bytes
        );
    }
    if let Some(summary) = &summary {
        for (kind, count) in &summary.kinds {
            outln!(
                "  {kind:<8} {:>8} events {:>12} bytes",
                count.events,
                count.bytes
            );
        }
        let net = &summary.network;
        outln!(
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
            outln!(
                "models    {} calls, {} input and {} output tokens, ~${:.4}",
                net.model_calls,
                net.input_tokens,
                net.output_tokens,
                net.cost_usd
            );
        }
    }
    if let Some(mounted) = &mounted {
        let kept = if workspace.has_changes() {
            format!("changes kept (capsem diff {})", row.id)
        } else {
            "no changes kept".to_owned()
        };
        let root = visible(&mounted.root.to_string_lossy()).into_owned();
        field(
            "workspace",
            format!("{root} at /root/{}; {kept}", visible(&mounted.name)),
        );
        for record in workspace.applied() {
            outln!(
                "  {} {} by {}: {} paths, {} bytes",
                local_time(record.at_ms),
                record.action,
                visible(&record.user),
                record.paths.len(),
                record.bytes
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
/// `capsem sessions show --json`'s record of a session (docs/json.md,
/// "session_detail"), which `capsem mcp`'s `session_show` answers too.
pub fn detail(store: &Store, row: &SessionRow) -> serde_json::Value {
    let dir = store.dir_of(&row.id);
    let workspace = Stored::new(&dir);
    json!({
        "session": row,
        "dir": dir,
        "boot_log": dir.join("boot.log"),
        "qemu_log": dir.join("qemu.log"),
        "events": events::summarize(&dir.join(EVENTS_FILE)).ok(),
        "workspace": workspace.mounted().map(|m| json!({
            "mounted": m,
            "changes_kept": workspace.has_changes(),
            "applied": workspace.applied(),
        })),
    })
}

fn inspect(store: &Store, prefix: Option<&str>, json: bool) -> Result<i32, Failure> {
    let report = store.inspect();
    let events = match prefix {
        Some(prefix) => {
            let id = store.resolve(prefix).map_err(Failure::new)?;
            let path = store.dir_of(&id).join(EVENTS_FILE);
            Some((
                id,
                events::summarize(&path).map_err(|e| format!("{}: {e}", path.display())),
            ))
        }
        None => None,
    };
    let index_ok = report.as_ref().is_ok_and(Inspection::is_ok);
    let events_ok = events
        .as_ref()
        .is_none_or(|(_, s)| s.as_ref().is_ok_and(|s| s.integrity == ["ok"]));
    let ok = index_ok && events_ok;
    if json {
        let data = json!({
            "ok": ok,
            "index": report.as_ref().ok(),
            "index_error": report.as_ref().err().map(ToString::to_string),
            "session": events.as_ref().map(|(id, _)| id),
            "events": events.as_ref().and_then(|(_, s)| s.as_ref().ok()),
            "events_error": events.as_ref().and_then(|(_, s)| s.as_ref().err()),
        });
        outln!("{}", json!({ "type": "inspection", "data": data }));
        return Ok(if ok { 0 } else { 1 });
    }
    match &report {
        Ok(report) => print_inspection(report),
        Err(e) => outln!("{e}"),
    }
    match &events {
        Some((_, Ok(summary))) => {
            outln!("events integrity: {}", summary.integrity.join("; "));
            for (kind, count) in &summary.kinds {
                outln!(
                    "  {kind:<8} {:>8} events {:>12} bytes",
                    count.events,
                    count.bytes
                );
            }
        }
        Some((_, Err(e))) => outln!("events database {e}"),
        None => {}
    }
    outln!("{}", if ok { "ok" } else { "PROBLEMS FOUND" });
    Ok(if ok { 0 } else { 1 })
}

fn print_inspection(report: &Inspection) {
    outln!("index integrity: {}", report.integrity.join("; "));
    outln!("schema version:  {}", report.schema_version);
    let counts: Vec<String> = report
        .by_status
        .iter()
        .map(|(status, n)| format!("{status} {n}"))
        .collect();
    outln!(
        "sessions:        {}",
        if counts.is_empty() {
            "none".into()
        } else {
            counts.join(", ")
        }
    );
    for id in &report.rows_without_dir {
        outln!("row without directory: {id}");
    }
    for id in &report.dirs_without_row {
        outln!("directory without row: {id}");
    }
}

/// Writes the output of a terminal session to stdout, optionally paced as
/// it was produced.
fn replay(store: &Store, prefix: &str, timing: bool) -> Result<i32, Failure> {
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
    let mut shown = Duration::ZERO;
    for record in records {
        let (at, record) = record.map_err(reading)?;
        match record {
            Record::Output(bytes) => {
                if timing {
                    std::thread::sleep(at.saturating_sub(shown));
                    shown = at;
                }
                crate::out::bytes(&bytes);
            }
            Record::Cut => {
                eprintln!(
                    "\r\ncapsem: the transcript stops here: the session reached sessions.max_session_mib"
                );
            }
            Record::Input(_) | Record::Resize { .. } => {}
        }
    }
    Ok(0)
}

/// What `sessions prune` was asked.
struct Prune {
    older_than: Option<Duration>,
    keep: Option<usize>,
    dry_run: bool,
    yes: bool,
}

fn prune(store: &Store, ask: Prune) -> Result<i32, Failure> {
    let (older_than, keep) = if ask.older_than.is_none() && ask.keep.is_none() {
        let retention = Settings::load().map_err(Failure::new)?.sessions();
        (
            (retention.retention_days > 0)
                .then(|| Duration::from_secs(u64::from(retention.retention_days) * 86_400)),
            (retention.max_count > 0).then_some(retention.max_count as usize),
        )
    } else {
        (ask.older_than, ask.keep)
    };
    let doomed = store.doomed(older_than, keep).map_err(Failure::new)?;
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    if ask.dry_run {
        outln!(
            "would prune {} session{}",
            doomed.len(),
            plural(doomed.len())
        );
        doomed.iter().for_each(|id| outln!("  {id}"));
        return Ok(0);
    }
    if keep == Some(0) && !ask.yes && !doomed.is_empty() && !confirm(doomed.len())? {
        return Ok(1);
    }
    let gone = store.prune(older_than, keep).map_err(Failure::new)?;
    outln!("pruned {} session{}", gone.len(), plural(gone.len()));
    Ok(0)
}

/// Asks on the terminal before every finished session goes; without a
/// terminal, `--yes` is the only way.
fn confirm(count: usize) -> Result<bool, Failure> {
    if !terminal::stdin_is_terminal() {
        return Err(Failure::new(format!(
            "--keep 0 deletes every finished session ({count}); add --yes to do that"
        )));
    }
    eprint!("capsem: delete all {count} finished sessions? [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Failure::new(format!("reading the answer: {e}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// A Unix time in ms as local wall-clock time.
pub fn local_time(ms: i64) -> String {
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
}
