//! The E2B-compatible API, as E2B's Python SDK sees it: `Sandbox.create()`
//! to a sandbox that takes commands, and `commands.run("true")`'s round
//! trip against `capsem exec NAME true`'s, and against `capsem exec` of
//! what the SDK runs (`bash -l -c true`: a login shell) to tell the API's
//! cost from the shell's.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::sandboxes::{ok, timed};
use super::{capsem_cmd, median_of as median, ratio, stats};
use crate::{clients, workspace};

/// `capsem exec` runs timed.
const EXECS: usize = 30;

pub fn measure(capsem: &Path, home: &Path, runs: usize) -> Result<Value> {
    let python = clients::build()?.join("venv/bin/python");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = capsem_cmd(capsem, home, &["e2b", "--port", &port.to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .context("starting capsem e2b")?;
    let mut lines = BufReader::new(server.stderr.take().context("its stderr")?).lines();
    let key = loop {
        let Some(line) = lines.next() else {
            bail!("capsem e2b ended without printing its key");
        };
        if let Some((_, key)) = line?.split_once("E2B_API_KEY=") {
            break key.trim().to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let url = format!("http://127.0.0.1:{port}");
    let timed_sdk = Command::new(python)
        .arg(workspace().join("tests/clients/e2b_bench.py"))
        .arg(runs.to_string())
        .env("E2B_API_URL", &url)
        .env("E2B_SANDBOX_URL", &url)
        .env("E2B_API_KEY", &key)
        .output();
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()?;
    server.wait()?;
    let out = timed_sdk.context("running the E2B SDK")?;
    if !out.status.success() {
        bail!(
            "the E2B SDK's run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let sdk: Value = serde_json::from_slice(&out.stdout).context("its figures")?;
    ok(capsem, home, &["create", "-n", "bench-e2b"])?;
    let execs = |command: &str| {
        (0..EXECS)
            .map(|_| timed(capsem, home, &["exec", "bench-e2b", command]))
            .collect::<Result<Vec<_>>>()
    };
    let (exec, login) = (execs("true"), execs("exec bash -l -c true"));
    ok(capsem, home, &["rm", "-f", "bench-e2b"])?;
    let (exec, login) = (stats(exec?), stats(login?));
    let figures = |key: &str| {
        stats(
            sdk[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64),
        )
    };
    let (create, run) = (figures("create_ms"), figures("run_true_ms"));
    Ok(json!({
        "sandbox_create_to_ready_ms": create,
        "commands_run_true_ms": run,
        "capsem_exec_true_ms": exec,
        "capsem_exec_login_shell_true_ms": login,
        "run_true_vs_capsem_exec": ratio(median(&run), median(&exec)),
        "run_true_vs_capsem_exec_login_shell": ratio(median(&run), median(&login)),
    }))
}
