//! `capsem net`: a session's network activity.

use capsem_core::paths;
use capsem_core::session::Store;
use capsem_core::session::events::{
    self, DnsRow, EVENTS_FILE, ModelRow, NetRow, Reporter, Verdict,
};
use capsem_core::text::visible;
use serde_json::json;

use crate::cli::NetAction;
use crate::exit::Failure;
use crate::out::outln;

/// The current or last boot of the named sandbox `name`, if it is one.
fn sandbox_session(home: &std::path::Path, name: &str) -> Option<String> {
    capsem_service::name::check(name).ok()?;
    capsem_service::SandboxDir::of(home, name).last_session()
}

/// The session `id` names: a sandbox's current or last boot, a session id
/// (or its prefix), or without `id` the newest session.
pub fn session_of(store: &Store, id: Option<&str>) -> Result<String, Failure> {
    match id {
        Some(name) if let Some(id) = sandbox_session(&paths::capsem_home(), name) => Ok(id),
        Some(prefix) => store.resolve(prefix).map_err(Failure::new),
        None => store
            .list(1)
            .map_err(Failure::new)?
            .pop()
            .map(|row| row.id)
            .ok_or_else(|| Failure::new("no sessions yet")),
    }
}

/// Runs a `net` subcommand; returns the exit code.
pub fn run(action: NetAction) -> Result<i32, Failure> {
    let NetAction::Log { id, json } = action;
    let store = Store::open(&paths::capsem_home()).map_err(Failure::new)?;
    let id = session_of(&store, id.as_deref())?;
    let path = store.dir_of(&id).join(EVENTS_FILE);
    let reading = |e| Failure::new(format!("reading {}: {e}", path.display()));
    let log = events::network_log(&path).map_err(reading)?;
    let (rows, calls, queries) = (log.requests, log.model_calls, log.dns);
    if json {
        for row in &queries {
            outln!("{}", json!({ "type": "dns", "data": row }));
        }
        for row in &rows {
            outln!("{}", json!({ "type": "net", "data": row }));
        }
        for call in &calls {
            outln!("{}", json!({ "type": "model_call", "data": call }));
        }
        return Ok(0);
    }
    if rows.is_empty() && queries.is_empty() {
        outln!("session {id}: no network activity");
        return Ok(0);
    }
    outln!(
        "{:>9}  {:<7}  {:<5}  {:<32}  {:>6}  {:>10}  {:>10}  REQUEST / RULE",
        "TIME(s)",
        "VERDICT",
        "PROTO",
        "DESTINATION",
        "STATUS",
        "UP",
        "DOWN"
    );
    rows.iter().for_each(print_row);
    if !calls.is_empty() {
        outln!("\nmodel calls:");
        calls.iter().for_each(print_call);
    }
    let refused: Vec<&DnsRow> = queries.iter().filter(|q| !q.query.allowed).collect();
    outln!(
        "\nDNS: {} queries, {} refused",
        queries.len(),
        refused.len()
    );
    for row in refused {
        outln!(
            "{:>9.3}  DENIED   {}  ({})",
            row.at_us as f64 / 1e6,
            visible(&row.query.name),
            visible(&row.query.rule)
        );
    }
    if rows.iter().any(|r| r.event.reported_by == Reporter::Guest) {
        outln!("\n(guest) rows are the guest's own reports, which guest root can forge.");
    }
    if rows.iter().any(|r| r.event.process.is_some()) {
        outln!("[process] is named by the guest and not verified by the host.");
    }
    Ok(0)
}

fn print_row(row: &NetRow) {
    let e = &row.event;
    let (verdict, why) = match e.decision {
        Verdict::Allowed => ("allowed", None),
        Verdict::Denied => ("DENIED", e.rule.as_deref()),
        Verdict::Error => ("ERROR", e.error.as_deref()),
    };
    let host = e.domain.as_deref().or(e.ip.as_deref()).unwrap_or("?");
    let destination = format!("{}:{}", visible(host), e.port);
    let status = e.status.map_or("-".to_owned(), |s| s.to_string());
    // The request, then why it was refused or failed, then who made it.
    let mut detail: Vec<String> = Vec::new();
    if let (Some(method), Some(path)) = (&e.method, &e.path) {
        detail.push(format!("{} {}", visible(method), visible(path)));
    }
    detail.extend(why.map(|why| format!("({})", visible(why))));
    detail.extend(e.process.as_deref().map(|p| {
        let short: String = p.chars().take(40).collect();
        format!("[{}]", visible(&short))
    }));
    if e.reported_by == Reporter::Guest {
        detail.push("(guest)".to_owned());
    }
    outln!(
        "{:>9.3}  {verdict:<7}  {:<5}  {destination:<32}  {status:>6}  {:>10}  {:>10}  {}",
        row.at_us as f64 / 1e6,
        visible(&e.protocol),
        e.bytes_up,
        e.bytes_down,
        detail.join(" "),
    );
}

fn print_call(row: &ModelRow) {
    let c = &row.call;
    let cost = c
        .cost_usd
        .map_or("?".to_owned(), |usd| format!("${usd:.4}"));
    outln!(
        "{:>9.3}  {:<9}  {:<28}  {:>8} in  {:>8} out  {:<14}  {cost}",
        row.at_us as f64 / 1e6,
        c.provider,
        visible(c.model.as_deref().unwrap_or("?")),
        c.input_tokens,
        c.output_tokens,
        visible(c.stop_reason.as_deref().unwrap_or("-")),
    );
}
