//! The web UI in Chromium (`ui/tests/bench.mjs`): the Sandboxes view with
//! 1,000 sessions in the store, the Network view of a sandbox with 10,000
//! records, and a keystroke's round trip in the browser terminal against
//! the same sandbox's `capsem shell` on a terminal.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use capsem_core::session::store::{Ending, NewSession, Status, Store};
use serde_json::{Value, json};

use super::sandboxes::ok;
use super::terminal;
use super::{median_of as median, ratio, stats};
use crate::ui;

/// Sessions in the store while the Sandboxes view is timed.
const SESSIONS: usize = 1000;
/// Records of the sandbox whose Network view is timed.
const NET_ROWS: usize = 10_000;
const NAME: &str = "bench-ui";

pub fn measure(capsem: &Path, home: &Path, runs: usize) -> Result<Value> {
    let project = ui::build()?;
    seed_sessions(home)?;
    ok(capsem, home, &["create", "-n", NAME])?;
    let measured = (|| {
        // Each refused name is a DNS record of the sandbox's boot.
        let script =
            format!("for i in $(seq {NET_ROWS}); do getent hosts n$i.denied.test; done; true");
        ok(capsem, home, &["exec", NAME, &script])?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let opened = ok(
            capsem,
            home,
            &["ui", "--no-open", "--port", &port.to_string()],
        )?;
        let login = opened
            .lines()
            .find_map(|l| l.strip_prefix("sign in: "))
            .context("capsem ui printed no sign-in address")?;
        let out = Command::new(project.join("bin/node"))
            .arg(project.join("tests/bench.mjs"))
            .env("CAPSEM_UI_LOGIN_URL", login)
            .env("CAPSEM_UI_SANDBOX", NAME)
            .env("CAPSEM_UI_NET_ROWS", NET_ROWS.to_string())
            .env("CAPSEM_UI_RUNS", runs.to_string())
            .stdin(Stdio::null())
            .output()
            .context("running ui/tests/bench.mjs")?;
        if !out.status.success() {
            bail!(
                "the UI bench failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let browser: Value = serde_json::from_slice(&out.stdout).context("its figures")?;
        Ok((
            browser,
            terminal::keystroke_latency(capsem, home, &["shell", NAME])?,
        ))
    })();
    ok(capsem, home, &["rm", "-f", NAME])?;
    let (browser, cli) = measured?;
    let figures = |key: &str| {
        stats(
            browser[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64),
        )
    };
    let keystroke = figures("keystroke_ms");
    Ok(json!({
        "sessions_in_store": SESSIONS,
        "sandboxes_view_ms": figures("sandboxes_view_ms"),
        "network_records": NET_ROWS,
        "network_view_ms": figures("network_view_ms"),
        "browser_keystroke_ms": keystroke,
        "cli_shell_keystroke_ms": cli,
        "browser_to_cli_keystroke": ratio(median(&keystroke), median(&cli)),
    }))
}

/// Finished sessions in `home`'s store, as many runs would leave.
fn seed_sessions(home: &Path) -> Result<()> {
    let store = Store::open(home)?;
    let now = capsem_core::session::store::now_ms();
    for i in 0..SESSIONS {
        let id = format!("be{i:06x}");
        let started = now - 60_000 * (i64::try_from(i)? + 1);
        store.insert(&NewSession {
            id: id.clone(),
            started_at_ms: started,
            command: format!("echo bench {i}"),
            cpus: 2,
            memory_mib: 1024,
            assets: Default::default(),
        })?;
        store.finish(
            &id,
            &Ending {
                status: Status::Exited,
                exit_code: Some(0),
                error: None,
                accel: Some("tcg"),
                phases_json: None,
                event_count: 0,
                lost_events: 0,
                over_budget_events: 0,
                transcript_cut_bytes: 0,
            },
        )?;
    }
    Ok(())
}
