//! `capsem net`: a session's network activity.

use capsem_core::paths;
use capsem_core::session::Store;
use capsem_core::session::events::{self, EVENTS_FILE, NetRow, Verdict};
use serde_json::json;

use crate::cli::NetAction;
use crate::exit::Failure;

/// Runs a `net` subcommand; returns the exit code.
pub fn run(action: NetAction) -> Result<i32, Failure> {
    let NetAction::Log { id, json } = action;
    let store = Store::open(&paths::capsem_home()).map_err(Failure::new)?;
    let id = match id {
        Some(prefix) => store.resolve(&prefix).map_err(Failure::new)?,
        None => store
            .list(1)
            .map_err(Failure::new)?
            .pop()
            .map(|row| row.id)
            .ok_or_else(|| Failure::new("no sessions yet"))?,
    };
    let path = store.dir_of(&id).join(EVENTS_FILE);
    let rows = events::net_log(&path)
        .map_err(|e| Failure::new(format!("reading {}: {e}", path.display())))?;
    if json {
        for row in &rows {
            println!("{}", json!({ "type": "net", "data": row }));
        }
        return Ok(0);
    }
    if rows.is_empty() {
        println!("session {id}: no network activity");
        return Ok(0);
    }
    println!(
        "{:>9}  {:<7}  {:<5}  {:<32}  {:>6}  {:>10}  {:>10}  REQUEST / RULE",
        "TIME(s)", "VERDICT", "PROTO", "DESTINATION", "STATUS", "UP", "DOWN"
    );
    rows.iter().for_each(print_row);
    Ok(0)
}

fn print_row(row: &NetRow) {
    let e = &row.event;
    let verdict = match e.decision {
        Verdict::Allowed => "allowed",
        Verdict::Denied => "DENIED",
        Verdict::Error => "ERROR",
    };
    let host = e.domain.as_deref().or(e.ip.as_deref()).unwrap_or("?");
    let destination = format!("{host}:{}", e.port);
    let status = e.status.map_or("-".to_owned(), |s| s.to_string());
    let what = match (&e.method, &e.path) {
        (Some(method), Some(path)) => format!("{method} {path}"),
        _ => String::new(),
    };
    let why = match e.decision {
        Verdict::Allowed => String::new(),
        Verdict::Denied => e.rule.clone().unwrap_or_default(),
        Verdict::Error => e.error.clone().unwrap_or_default(),
    };
    let process = e
        .process
        .as_deref()
        .map(|p| format!(" [{}]", p.chars().take(40).collect::<String>()))
        .unwrap_or_default();
    println!(
        "{:>9.3}  {verdict:<7}  {:<5}  {destination:<32}  {status:>6}  {:>10}  {:>10}  {}{}{process}",
        row.at_us as f64 / 1e6,
        e.protocol,
        e.bytes_up,
        e.bytes_down,
        what,
        if what.is_empty() || why.is_empty() {
            why.clone()
        } else {
            format!(" ({why})")
        },
    );
}
