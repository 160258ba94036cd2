//! Named sandboxes: exec latency (through the CLI, through the API alone,
//! and the guest's own fork+exec), lifecycle times and host memory per
//! idle sandbox as their number grows, each from the boot template and
//! booted cold side by side, the memory a guest frees given back, and
//! suspend and resume times.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use capsem_service::Client;
use capsem_service::api::{ExecStart, ServerMsg};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{capsem_cmd, ms, ratio, stats};

/// Commands timed per measurement.
const EXECS: usize = 30;
/// How many idle sandboxes at once.
const FLEETS: [usize; 4] = [1, 5, 10, 20];

/// All the sandbox figures; `one_shot_ms` is `capsem true`'s median.
/// `home` starts sandboxes from the boot template, `cold_home` boots them.
pub fn measure(
    capsem: &Path,
    home: &Path,
    cold_home: &Path,
    runs: usize,
    one_shot_ms: f64,
) -> Result<Value> {
    let (mut lifecycle, mut cold) = (Lifecycle::default(), Lifecycle::default());
    for i in 0..runs.max(1) {
        lifecycle.run(capsem, home, &format!("bench-{i}"))?;
        cold.run(capsem, cold_home, &format!("bench-{i}"))?;
    }
    let name = "bench-exec";
    ok(capsem, home, &["create", "-n", name])?;
    let cli = (0..EXECS)
        .map(|_| timed(capsem, home, &["exec", name, "true"]))
        .collect::<Result<Vec<_>>>()?;
    let api = api_round_trips(home, name)?;
    let guest = guest_fork_exec_ms(capsem, home, name)?;
    ok(capsem, home, &["rm", "-f", name])?;
    let returned = memory_returned(capsem, home)?;
    let suspend = suspend_resume(capsem, home, runs.max(1))?;
    let idle_pss = fleets(capsem, home)?;
    let idle_pss_cold = fleets(capsem, cold_home)?;
    // The services the CLI started must not outlive the bench's homes.
    for home in [home, cold_home] {
        ok(capsem, home, &["service", "stop"])?;
    }
    let cli_median = median(&cli);
    let per_sandbox = |fleet: &Value| fleet["20"]["per_sandbox"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "exec_true_cli_ms": stats(cli.iter().copied()),
        "exec_true_api_ms": stats(api.iter().copied()),
        "guest_fork_exec_wait_ms": guest,
        "ratio_cli_to_one_shot": ratio(cli_median, one_shot_ms),
        "ratio_cli_to_guest": ratio(cli_median, guest),
        "ratio_api_to_guest": ratio(median(&api), guest),
        "create_ms": stats(lifecycle.create.iter().copied()),
        "create_to_first_output_ms": stats(lifecycle.first_output.iter().copied()),
        "stop_ms": stats(lifecycle.stop),
        "start_ms": stats(lifecycle.start.iter().copied()),
        "rm_ms": stats(lifecycle.rm),
        "cold": {
            "create_ms": stats(cold.create.iter().copied()),
            "create_to_first_output_ms": stats(cold.first_output.iter().copied()),
            "start_ms": stats(cold.start.iter().copied()),
        },
        "ratio_create_to_cold": ratio(median(&lifecycle.create), median(&cold.create)),
        "ratio_start_to_cold": ratio(median(&lifecycle.start), median(&cold.start)),
        "idle_pss_mib": idle_pss,
        "idle_pss_mib_cold": idle_pss_cold,
        // Idle sandboxes per GiB from the template, over cold-booted ones.
        "ratio_idle_density_to_cold": ratio(per_sandbox(&idle_pss_cold), per_sandbox(&idle_pss)),
        "memory_returned_mib": returned,
        "suspend_resume": suspend,
    }))
}

#[derive(Default)]
struct Lifecycle {
    create: Vec<f64>,
    /// `create` and then an `exec` whose output arrives.
    first_output: Vec<f64>,
    stop: Vec<f64>,
    start: Vec<f64>,
    rm: Vec<f64>,
}

impl Lifecycle {
    fn run(&mut self, capsem: &Path, home: &Path, name: &str) -> Result<()> {
        let create = timed(capsem, home, &["create", "-n", name])?;
        self.create.push(create);
        self.first_output
            .push(create + timed(capsem, home, &["exec", name, "echo ready"])?);
        self.stop.push(timed(capsem, home, &["stop", name])?);
        self.start.push(timed(capsem, home, &["start", name])?);
        self.rm.push(timed(capsem, home, &["rm", "-f", name])?);
        Ok(())
    }
}

fn median(v: &[f64]) -> f64 {
    stats(v.iter().copied())["median"]
        .as_f64()
        .unwrap_or(f64::NAN)
}

pub(super) fn ok(capsem: &Path, home: &Path, args: &[&str]) -> Result<String> {
    let out = capsem_cmd(capsem, home, args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running capsem {args:?}"))?;
    if !out.status.success() {
        bail!(
            "capsem {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Process start to exit of `capsem ARGS`, in ms.
pub(super) fn timed(capsem: &Path, home: &Path, args: &[&str]) -> Result<f64> {
    let started = Instant::now();
    ok(capsem, home, args)?;
    Ok(ms(started.elapsed()))
}

/// `true` run over the API's exec WebSocket, no CLI process: connect,
/// send, wait for the exit.
fn api_round_trips(home: &Path, name: &str) -> Result<Vec<f64>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = Client::new(capsem_service::layout::service_socket(home));
    let start = serde_json::to_string(&ExecStart {
        command: capsem_proto::Command::Argv(vec!["true".into()]),
        env: Vec::new(),
        tty: None,
        timeout_ms: None,
    })?;
    runtime.block_on(async {
        let mut samples = Vec::with_capacity(EXECS);
        for _ in 0..EXECS {
            let started = Instant::now();
            let mut socket = client
                .websocket(&format!("/v1/sandboxes/{name}/exec"))
                .await?;
            socket.send(Message::Text(start.clone().into())).await?;
            socket
                .send(Message::Text(r#"{"type":"stdin_eof"}"#.into()))
                .await?;
            loop {
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let msg: ServerMsg = serde_json::from_str(&text)?;
                        if !matches!(msg, ServerMsg::Exited { code: Some(0), .. }) {
                            bail!("true over the API ended with {msg:?}");
                        }
                        break;
                    }
                    Some(Ok(_)) => {}
                    other => bail!("the exec stream ended early: {other:?}"),
                }
            }
            samples.push(ms(started.elapsed()));
        }
        Ok(samples)
    })
}

/// The guest's own cost of running `true`: 20 fork+exec+waits in bash,
/// timed by the guest's clock.
fn guest_fork_exec_ms(capsem: &Path, home: &Path, name: &str) -> Result<f64> {
    let script = "s=$(date +%s%N); for i in $(seq 20); do /bin/true; done; e=$(date +%s%N); echo $(( (e - s) / 20000 ))";
    let out = ok(capsem, home, &["exec", name, script])?;
    let us: f64 = out
        .trim()
        .parse()
        .with_context(|| format!("reading {out:?}"))?;
    Ok((us / 10.0).round() / 100.0)
}

/// QEMU's RSS with 300 MiB of guest tmpfs written, and 10 s after the
/// guest freed it (free page reporting gives it back).
fn memory_returned(capsem: &Path, home: &Path) -> Result<Value> {
    let name = "bench-memory";
    create_filled(capsem, home, name, "300M", "/dev/zero")?;
    let qemu = || {
        supervisors(home)
            .first()
            .and_then(|&pid| super::first_child(pid))
            .map_or(0.0, |pid| super::status_kib(pid, "VmRSS:") as f64 / 1024.0)
    };
    let held = rss_mib(qemu());
    ok(capsem, home, &["exec", name, "rm /dev/shm/fill"])?;
    std::thread::sleep(std::time::Duration::from_secs(10));
    let after = rss_mib(qemu());
    ok(capsem, home, &["rm", "-f", name])?;
    Ok(json!({ "held": held, "after_free": after, "returned": rss_mib(held - after) }))
}

/// `capsem suspend` and `capsem resume` of a sandbox holding 256 MiB of
/// written guest memory, and the state file's size.
fn suspend_resume(capsem: &Path, home: &Path, runs: usize) -> Result<Value> {
    let name = "bench-suspend";
    create_filled(capsem, home, name, "256M", "/dev/urandom")?;
    let (mut suspend, mut resume, mut state_mib) = (Vec::new(), Vec::new(), 0.0);
    for _ in 0..runs {
        suspend.push(timed(capsem, home, &["suspend", name])?);
        let state = home.join("sandboxes").join(name).join("suspended.state");
        state_mib = std::fs::metadata(&state)?.len() as f64 / (1 << 20) as f64;
        resume.push(timed(capsem, home, &["resume", name])?);
        ok(capsem, home, &["exec", name, "test -s /dev/shm/fill"])?;
    }
    ok(capsem, home, &["rm", "-f", name])?;
    Ok(json!({
        "dirty_guest_mib": 256,
        "suspend_ms": stats(suspend),
        "resume_ms": stats(resume),
        "state_mib": rss_mib(state_mib),
    }))
}

/// Creates sandbox `name` with `size` of `source` written to its
/// `/dev/shm/fill` (guest memory).
fn create_filled(capsem: &Path, home: &Path, name: &str, size: &str, source: &str) -> Result<()> {
    ok(capsem, home, &["create", "-n", name])?;
    let fill = format!("head -c {size} {source} > /dev/shm/fill");
    ok(capsem, home, &["exec", name, &fill])?;
    Ok(())
}

fn rss_mib(mib: f64) -> f64 {
    (mib * 10.0).round() / 10.0
}

/// Host memory (PSS of each supervisor and its QEMU) with N idle
/// sandboxes at once.
fn fleets(capsem: &Path, home: &Path) -> Result<Value> {
    let mut out = serde_json::Map::new();
    let mut created = 0;
    for n in FLEETS {
        while created < n {
            ok(capsem, home, &["create", "-n", &format!("idle-{created}")])?;
            created += 1;
        }
        std::thread::sleep(std::time::Duration::from_secs(5));
        let total = supervisors(home)
            .iter()
            .map(|&pid| tree_pss_kib(pid))
            .sum::<u64>();
        let total_mib = total as f64 / 1024.0;
        out.insert(
            n.to_string(),
            json!({
                "total": (total_mib * 10.0).round() / 10.0,
                "per_sandbox": (total_mib / n as f64 * 10.0).round() / 10.0,
            }),
        );
    }
    for i in 0..created {
        ok(capsem, home, &["rm", "-f", &format!("idle-{i}")])?;
    }
    Ok(Value::Object(out))
}

/// The supervisors running sandboxes of `home`.
fn supervisors(home: &Path) -> Vec<u32> {
    let wanted = format!("CAPSEM_HOME={}", home.display());
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            cmdline.split(|b| *b == 0).nth(1) == Some(b"supervise")
                && environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes())
        })
        .collect()
}

/// PSS of `pid` and its children, in KiB.
fn tree_pss_kib(pid: u32) -> u64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let mut pids = vec![pid];
    pids.extend(
        children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok()),
    );
    // QEMU is started by a thread of its own: its children file lists it.
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    for task in tasks {
        let more = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        pids.extend(
            more.split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    pids.sort_unstable();
    pids.dedup();
    pids.iter().map(|&p| pss_kib(p)).sum()
}

fn pss_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
