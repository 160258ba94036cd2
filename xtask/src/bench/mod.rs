//! `cargo xtask bench`: cold start and host memory of `capsem true`, next to
//! the floor: bare QEMU booting the same kernel into a trivial `/init` that
//! powers off at once; and the same run started from the boot template. Runs are interleaved so drift hits both alike;
//! medians are reported, with min and max for spread.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use capsem_core::assets::CurrentAssets;
use capsem_core::session::store::Store;
use capsem_core::session::{ExecEvent, events};
use capsem_core::settings::VmSettings;
use capsem_core::vm::{self, AccelSetting, GuestRoot, qemu};
use clap::Args;
use serde_json::{Value, json};

use crate::{Inputs, cargo, deps, initramfs, proc, workspace};

mod agents;
mod e2b;
mod network;
mod sandboxes;
mod terminal;
mod ui;
mod workspace;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Runs of each measurement; medians are reported.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Where the JSON report goes.
    #[arg(long, default_value = "target/bench/bench.json")]
    out: PathBuf,
    /// Only the network proxy's latency and throughput (written to the
    /// report's `network` key alone).
    #[arg(long, conflicts_with_all = ["sandboxes_only", "workspace_only", "start_only"])]
    network_only: bool,
    /// Only the named sandboxes' exec latency, lifecycle and memory
    /// (written to the report's `sandboxes` key alone).
    #[arg(long, conflicts_with_all = ["workspace_only", "start_only"])]
    sandboxes_only: bool,
    /// Only the workspaces' mount, git status, read, diff and apply
    /// figures (written to the report's `workspace` key alone).
    #[arg(long, conflicts_with = "start_only")]
    workspace_only: bool,
    /// Only the E2B-compatible API through E2B's Python SDK (written to
    /// the report's `e2b` key alone).
    #[arg(long, conflicts_with_all = ["network_only", "sandboxes_only", "workspace_only", "start_only"])]
    e2b_only: bool,
    /// Only the web UI in Chromium (written to the report's `ui` key alone).
    #[arg(long, conflicts_with_all = ["e2b_only", "network_only", "sandboxes_only", "workspace_only", "start_only"])]
    ui_only: bool,
    /// Only the start of `capsem true`: the floor, cold boots, starts from
    /// the boot template, and idle memory (no AI CLIs, network, sandboxes,
    /// workspaces or terminal).
    #[arg(long)]
    start_only: bool,
}

/// One timed process run.
struct Sample {
    wall: Duration,
    /// Peak RSS of the VM monitor, in KiB.
    qemu_kib: u64,
    /// Peak RSS of capsem itself, in KiB (0 for the floor).
    capsem_kib: u64,
    /// Phase timings from the session record, in ms.
    phases: BTreeMap<String, f64>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.runs < 3 {
        bail!("--runs must be at least 3 for a meaningful median");
    }
    deps::ensure()?;
    let inputs = Inputs::build()?;
    let current_json = &inputs.current_json;
    proc::run(cargo(&inputs).args(["build", "--release", "--locked", "-q", "-p", "capsem"]))?;
    let capsem = workspace().join("target/release/capsem");
    let scratch = tempdir("capsem-bench")?;
    let home = scratch.join("home");
    if args.sandboxes_only {
        let one_shot = run_capsem(&capsem, &home, "true")?;
        let cold_home = home_with(&scratch, "cold-home", COLD)?;
        let measured =
            sandboxes::measure(&capsem, &home, &cold_home, args.runs, ms(one_shot.wall))?;
        let report = json!({ "sandboxes": measured });
        print_sandboxes(&report["sandboxes"]);
        return write_report(&report, &args.out, &scratch);
    }
    if args.workspace_only {
        let report = json!({ "workspace": workspace::measure(&capsem, &scratch, args.runs)? });
        print_workspace(&report["workspace"]);
        return write_report(&report, &args.out, &scratch);
    }
    if args.ui_only {
        let report = json!({ "ui": ui::measure(&capsem, &home, args.runs)? });
        print_ui(&report["ui"]);
        return write_report(&report, &args.out, &scratch);
    }
    if args.e2b_only {
        let report = json!({ "e2b": e2b::measure(&capsem, &home, args.runs)? });
        print_e2b(&report["e2b"]);
        return write_report(&report, &args.out, &scratch);
    }
    if args.network_only {
        let report = json!({ "network": network::measure(&capsem, &home)? });
        print_network(&report["network"]);
        return write_report(&report, &args.out, &scratch);
    }
    let current = CurrentAssets::parse(&fs::read_to_string(current_json)?)?;
    let floor_initrd = build_floor(&scratch)?;
    let vm = VmSettings::default();
    let accel = vm::accel::choose(AccelSetting::Auto)?.accel;

    eprintln!("xtask: building the boot template from scratch");
    let build = template_build(&capsem, &scratch)?;
    eprintln!("xtask: warming up (first run hashes the assets)");
    run_capsem(&capsem, &home, "true")?;
    // Booted cold, and with the image as the root for the overlay's cost.
    let cold_home = home_with(&scratch, "cold-home", COLD)?;
    let read_only_home = home_with(
        &scratch,
        "read-only-home",
        &format!("{COLD}[guest]\nroot = \"read-only\"\n"),
    )?;
    let (mut floor, mut cold, mut read_only, mut snapshot) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.runs {
        eprintln!("xtask: run {}/{}", i + 1, args.runs);
        floor.push(run_floor(&current, &floor_initrd, &vm, accel, &scratch)?);
        cold.push(run_capsem(&capsem, &cold_home, "true")?);
        snapshot.push(run_capsem(&capsem, &home, "true")?);
        read_only.push(run_capsem(&capsem, &read_only_home, "true")?);
    }
    let idle = (0..3)
        .map(|_| run_capsem(&capsem, &cold_home, "sleep 2"))
        .collect::<Result<Vec<_>>>()?;
    let idle_restored = (0..3)
        .map(|_| run_capsem(&capsem, &home, "sleep 2"))
        .collect::<Result<Vec<_>>>()?;

    let mut report = report(&floor, &cold, &idle, &vm, accel.name(), args.runs);
    report["guest_root"] = guest_root(&cold, &read_only);
    report["snapshot_start"] = snapshot_start(&cold, &snapshot, &idle_restored, build);
    report["session_recording"] = recording(&report, &scratch)?;
    if args.start_only {
        print_start(&report);
        return write_report(&report, &args.out, &scratch);
    }
    eprintln!("xtask: AI CLI cold starts");
    report["ai_cli_cold_start_ms"] = agents::cold_starts(&capsem, &home)?;
    eprintln!("xtask: network proxy latency and throughput");
    report["network"] = network::measure(&capsem, &home)?;
    eprintln!("xtask: named sandboxes");
    let one_shot = median_of(&report["snapshot_start"]["wall_ms"]);
    report["sandboxes"] =
        sandboxes::measure(&capsem, &home, &cold_home, args.runs.min(3), one_shot)?;
    eprintln!("xtask: workspaces");
    report["workspace"] = workspace::measure(&capsem, &scratch, args.runs.min(3))?;
    eprintln!("xtask: terminal latency and throughput");
    report["terminal"] = json!({
        "keystroke_round_trip_ms": terminal::keystroke_latency(&capsem, &home, &["-q"])?,
        "output": terminal::throughput(&capsem, &home)?,
    });
    eprintln!("xtask: the E2B-compatible API");
    report["e2b"] = e2b::measure(&capsem, &home, args.runs.min(3))?;
    eprintln!("xtask: the web UI");
    report["ui"] = ui::measure(&capsem, &home, args.runs.min(3))?;
    print_summary(&report);
    print_e2b(&report["e2b"]);
    print_ui(&report["ui"]);
    write_report(&report, &args.out, &scratch)
}

fn print_ui(u: &Value) {
    line("UI Sandboxes view, 1,000 sessions", &u["sandboxes_view_ms"]);
    line("UI Network view, 10,000 records", &u["network_view_ms"]);
    line("UI terminal keystroke", &u["browser_keystroke_ms"]);
    line("capsem shell keystroke", &u["cli_shell_keystroke_ms"]);
    eprintln!(
        "  browser / CLI keystroke: {}",
        u["browser_to_cli_keystroke"]
    );
}

fn print_e2b(e: &Value) {
    line(
        "E2B Sandbox.create() to ready",
        &e["sandbox_create_to_ready_ms"],
    );
    line("E2B commands.run(\"true\")", &e["commands_run_true_ms"]);
    line("capsem exec NAME true", &e["capsem_exec_true_ms"]);
    line(
        "capsem exec NAME 'exec bash -l -c true'",
        &e["capsem_exec_login_shell_true_ms"],
    );
    eprintln!(
        "  run(\"true\") / capsem exec: {}; / the same login shell: {}",
        e["run_true_vs_capsem_exec"], e["run_true_vs_capsem_exec_login_shell"]
    );
}

/// A capsem home in `scratch` with `toml` as its user settings.
fn home_with(scratch: &Path, name: &str, toml: &str) -> Result<PathBuf> {
    let dir = scratch.join(name);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("user.toml"), toml)?;
    Ok(dir)
}

fn write_report(report: &Value, out: &Path, scratch: &Path) -> Result<()> {
    let out = workspace().join(out);
    fs::create_dir_all(out.parent().unwrap_or(Path::new(".")))?;
    fs::write(&out, serde_json::to_string_pretty(report)?)?;
    eprintln!("xtask: wrote {}", out.display());
    let _ = fs::remove_dir_all(scratch);
    Ok(())
}

fn tempdir(prefix: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Compiles the floor's `/init` and packs it like the real initramfs.
fn build_floor(scratch: &Path) -> Result<PathBuf> {
    let binary = scratch.join("floor-init");
    proc::run(
        Command::new("gcc")
            .args(["-static", "-Os", "-o"])
            .arg(&binary)
            .arg(workspace().join("images/bench/floor-init.c")),
    )?;
    let mut cpio = Vec::new();
    initramfs::write_newc(&mut cpio, &fs::read(&binary)?)?;
    let path = scratch.join("floor.cpio");
    fs::write(&path, cpio)?;
    Ok(path)
}

fn run_floor(
    current: &CurrentAssets,
    initrd: &Path,
    vm: &VmSettings,
    accel: vm::Accel,
    scratch: &Path,
) -> Result<Sample> {
    let kernel = current.dir.join(&current.manifest.kernel.file);
    let path = |p: &Path| p.display().to_string();
    let console = format!("file,id=console,path={}", path(&scratch.join("floor.log")));
    let started = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args(qemu::machine_args(accel, vm.cpus, vm.memory_mib))
        .args(qemu::boot_args(
            accel,
            GuestRoot::ReadOnly,
            &path(&kernel),
            &path(initrd),
        ))
        .args(["-chardev", &console, "-serial", "chardev:console"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting QEMU")?;
    let (wall, qemu_kib, _) = watch(child, started)?;
    Ok(Sample {
        wall,
        qemu_kib,
        capsem_kib: 0,
        phases: BTreeMap::new(),
    })
}

/// `capsem ARGS` with its state in `home` and no corporate settings.
fn capsem_cmd(capsem: &Path, home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(capsem);
    cmd.args(args)
        .env("CAPSEM_HOME", home)
        .env("CAPSEM_CORP_CONFIG", home.join("no-corp.toml"))
        .env("TERM", "xterm-256color");
    cmd
}

/// Runs `script` in a fresh VM; its stdout.
fn in_guest(capsem: &Path, home: &Path, script: &str) -> Result<String> {
    let out = capsem_cmd(capsem, home, &["-q", script]).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "in the guest, `{script}` failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

fn run_capsem(capsem: &Path, home: &Path, command: &str) -> Result<Sample> {
    let before = sessions(home);
    let started = Instant::now();
    let child = capsem_cmd(capsem, home, &["-q", command])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting capsem")?;
    let (wall, capsem_kib, qemu_kib) = watch(child, started)?;
    let new: Vec<PathBuf> = sessions(home).difference(&before).cloned().collect();
    let [session] = new.as_slice() else {
        bail!("expected one new session, found {new:?}");
    };
    let id = session.file_name().unwrap_or_default().to_string_lossy();
    Ok(Sample {
        wall,
        qemu_kib,
        capsem_kib,
        phases: phases(home, &id)?,
    })
}

fn sessions(home: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(home.join("sessions"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Phase timings (ms since capsem started) from the session index.
fn phases(home: &Path, id: &str) -> Result<BTreeMap<String, f64>> {
    let row = Store::open(home)?.get(id)?;
    let Some(phases) = row.and_then(|r| r.phases) else {
        bail!("session {id} recorded no phases");
    };
    Ok(phases
        .into_iter()
        .map(|(name, ms)| (name.trim_end_matches("_ms").to_owned(), ms))
        .collect())
}

/// Waits for `child`, sampling peak RSS of it and of its first child (the
/// VM monitor, for capsem). Returns wall time and both peaks in KiB.
fn watch(mut child: Child, started: Instant) -> Result<(Duration, u64, u64)> {
    let done = Arc::new(AtomicBool::new(false));
    let (own, sub) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let pid = child.id();
    let sampler = {
        let (done, own, sub) = (done.clone(), own.clone(), sub.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                own.fetch_max(peak_rss_kib(pid), Ordering::Relaxed);
                if let Some(kid) = first_child(pid) {
                    sub.fetch_max(peak_rss_kib(kid), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let status = child.wait()?;
    let wall = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    if !status.success() {
        bail!("benchmark run failed: {status}");
    }
    Ok((
        wall,
        own.load(Ordering::Relaxed),
        sub.load(Ordering::Relaxed),
    ))
}

/// `VmHWM` (peak resident set) of a process, in KiB; 0 once it is gone.
fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// A `/proc/PID/status` field in KiB; 0 once the process is gone.
fn status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The first child of any thread of `pid` (capsem forks QEMU from a thread
/// of its own).
fn first_child(pid: u32) -> Option<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .find_map(|children| children.split_whitespace().next()?.parse().ok())
}

/// Median, min and max.
fn stats(values: impl IntoIterator<Item = f64>) -> Value {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    json!({ "median": round(median), "min": round(v[0]), "max": round(v[n - 1]) })
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `a / b` to two decimals.
fn ratio(a: f64, b: f64) -> f64 {
    (a / b * 100.0).round() / 100.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Cold start with the overlay root (the default) against the image as
/// the root.
fn guest_root(overlay: &[Sample], read_only: &[Sample]) -> Value {
    let overlay = stats(overlay.iter().map(|s| ms(s.wall)));
    let read_only = stats(read_only.iter().map(|s| ms(s.wall)));
    let ratio = round(median_of(&overlay) / median_of(&read_only));
    json!({ "overlay_wall_ms": overlay, "read_only_wall_ms": read_only, "ratio": ratio })
}

/// `vm.snapshot_start = false`.
const COLD: &str = "[vm]\nsnapshot_start = false\n";

/// One `capsem true` that builds the boot template, in a cache of its own:
/// its wall time and the template's size in MiB.
fn template_build(capsem: &Path, scratch: &Path) -> Result<(f64, f64)> {
    let cache = scratch.join("template-cache");
    let started = Instant::now();
    let status = capsem_cmd(capsem, &scratch.join("template-home"), &["-q", "true"])
        .env("XDG_CACHE_HOME", &cache)
        .status()?;
    let wall = ms(started.elapsed());
    if !status.success() {
        bail!("building the boot template failed: {status}");
    }
    let mut bytes = 0;
    for template in fs::read_dir(cache.join("capsem/templates"))?.flatten() {
        if let Ok(state) = fs::metadata(template.path().join("state")) {
            bytes += state.len();
        }
    }
    Ok((wall, bytes as f64 / (1024.0 * 1024.0)))
}

/// `capsem true` resumed from the boot template against a cold boot.
fn snapshot_start(
    cold: &[Sample],
    restored: &[Sample],
    idle: &[Sample],
    (build_ms, state_mib): (f64, f64),
) -> Value {
    let wall = stats(restored.iter().map(|s| ms(s.wall)));
    let cold_wall = stats(cold.iter().map(|s| ms(s.wall)));
    let mib = |kib: u64| kib as f64 / 1024.0;
    json!({
        "what": "capsem -q true resumed from the boot template (vm.snapshot_start = true)",
        "wall_ms": wall,
        "phases_ms": phase_stats(restored),
        "ratio_to_cold": ratio(median_of(&wall), median_of(&cold_wall)),
        "qemu_peak_rss_mib": stats(restored.iter().map(|s| mib(s.qemu_kib))),
        "idle_qemu_peak_rss_mib": stats(idle.iter().map(|s| mib(s.qemu_kib))),
        "template_build_wall_ms": round(build_ms),
        "template_state_mib": round(state_mib),
    })
}

/// Median, min and max of each phase over `samples`.
fn phase_stats(samples: &[Sample]) -> BTreeMap<&String, Value> {
    let names: BTreeSet<&String> = samples.iter().flat_map(|s| s.phases.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            (
                name,
                stats(samples.iter().filter_map(|s| s.phases.get(name).copied())),
            )
        })
        .collect()
}

fn median_of(value: &Value) -> f64 {
    value["median"].as_f64().unwrap_or(f64::NAN)
}

fn report(
    floor: &[Sample],
    cold: &[Sample],
    idle: &[Sample],
    vm: &VmSettings,
    accel: &str,
    runs: usize,
) -> Value {
    let floor_wall = stats(floor.iter().map(|s| ms(s.wall)));
    let cold_wall = stats(cold.iter().map(|s| ms(s.wall)));
    let phases = phase_stats(cold);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let floor_rss = stats(floor.iter().map(|s| mib(s.qemu_kib)));
    let idle_qemu = stats(idle.iter().map(|s| mib(s.qemu_kib)));
    let idle_capsem = stats(idle.iter().map(|s| mib(s.capsem_kib)));
    json!({
        "conditions": {
            "accel": accel,
            "cpus": vm.cpus,
            "memory_mib": vm.memory_mib,
            "runs": runs,
            "host_cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        },
        "floor": {
            "what": "bare QEMU, same kernel and machine, trivial /init that powers off",
            "wall_ms": floor_wall,
            "qemu_peak_rss_mib": floor_rss,
        },
        "cold_start": {
            "what": "capsem -q true booted cold (vm.snapshot_start = false): process start to exit, VM destroyed",
            "wall_ms": cold_wall,
            "phases_ms": phases,
            "ratio_to_floor": ratio(median_of(&cold_wall), median_of(&floor_wall)),
        },
        "idle_memory": {
            "what": "capsem -q 'sleep 2' booted cold: peak RSS while the VM sits idle",
            "qemu_peak_rss_mib": idle_qemu,
            "capsem_peak_rss_mib": idle_capsem,
            "qemu_ratio_to_floor": ratio(median_of(&idle_qemu), median_of(&floor_rss)),
        },
    })
}

/// Events offered to the writer in the throughput measurement.
const EVENTS: u32 = 200_000;

/// What recording a session costs: its time on the critical path of a
/// cold start (measured inside each run, so the host's noise between runs
/// does not swamp a few milliseconds), and the event writer's throughput.
fn recording(report: &Value, scratch: &Path) -> Result<Value> {
    let cold = median_of(&report["cold_start"]["wall_ms"]);
    let on_path = median_of(&report["cold_start"]["phases_ms"]["recording"]);
    let path = scratch.join("throughput.db");
    let (log, writer) = events::start(&path, std::sync::Arc::default())?;
    let started = Instant::now();
    for i in 0..EVENTS {
        let bytes = (i % 65536) as usize;
        log.exec(1, ExecEvent::Stdout { bytes });
    }
    drop(log);
    let counts = writer.finish();
    let secs = started.elapsed().as_secs_f64();
    Ok(json!({
        "what": "time spent recording on the critical path of `capsem true`; writer fed as fast as one thread can",
        "critical_path_ms": on_path,
        "cold_start_ratio_with_to_without": ratio(cold, cold - on_path),
        "events_offered": EVENTS,
        "events_written": counts.written,
        "events_dropped": counts.lost,
        "events_written_per_s": (counts.written as f64 / secs).round(),
    }))
}

fn line(name: &str, v: &Value) {
    println!(
        "  {name:<28} median {:>8.1}  min {:>8.1}  max {:>8.1}",
        median_of(v),
        v["min"].as_f64().unwrap_or(f64::NAN),
        v["max"].as_f64().unwrap_or(f64::NAN)
    );
}

/// The start and memory figures.
fn print_start(report: &Value) {
    let root = &report["guest_root"];
    println!(
        "guest root: overlay {:.1} ms, read-only {:.1} ms (ratio {})",
        median_of(&root["overlay_wall_ms"]),
        median_of(&root["read_only_wall_ms"]),
        root["ratio"]
    );
    let c = &report["conditions"];
    println!(
        "conditions: {} accel, {} vCPUs, {} MiB guest, {} runs each",
        c["accel"].as_str().unwrap_or("?"),
        c["cpus"],
        c["memory_mib"],
        c["runs"]
    );
    println!("wall time (ms):");
    line("floor (bare QEMU)", &report["floor"]["wall_ms"]);
    line("capsem true, cold", &report["cold_start"]["wall_ms"]);
    println!("  ratio {}", report["cold_start"]["ratio_to_floor"]);
    line(
        "capsem true from template",
        &report["snapshot_start"]["wall_ms"],
    );
    println!(
        "  ratio to cold {} (template built in {} ms, {} MiB)",
        report["snapshot_start"]["ratio_to_cold"],
        report["snapshot_start"]["template_build_wall_ms"],
        report["snapshot_start"]["template_state_mib"]
    );
    for (title, start) in [("cold", "cold_start"), ("from template", "snapshot_start")] {
        println!("capsem phases, {title} (ms since process start):");
        if let Some(phases) = report[start]["phases_ms"].as_object() {
            let mut ordered: Vec<(&String, &Value)> = phases.iter().collect();
            ordered.sort_by(|a, b| median_of(a.1).total_cmp(&median_of(b.1)));
            for (name, v) in ordered {
                line(name, v);
            }
        }
    }
    println!("peak RSS (MiB):");
    line("floor QEMU", &report["floor"]["qemu_peak_rss_mib"]);
    line("idle VM QEMU", &report["idle_memory"]["qemu_peak_rss_mib"]);
    line(
        "idle restored VM QEMU",
        &report["snapshot_start"]["idle_qemu_peak_rss_mib"],
    );
    line(
        "idle VM capsem",
        &report["idle_memory"]["capsem_peak_rss_mib"],
    );
    println!(
        "  QEMU ratio {}",
        report["idle_memory"]["qemu_ratio_to_floor"]
    );
}

fn print_summary(report: &Value) {
    print_start(report);
    println!("AI CLI cold start, `CLI --version` in a fresh guest (ms):");
    if let Some(clis) = report["ai_cli_cold_start_ms"].as_object() {
        for (cli, v) in clis {
            line(cli, v);
        }
    }
    let t = &report["terminal"];
    println!("terminal:");
    line("keystroke round trip (ms)", &t["keystroke_round_trip_ms"]);
    let o = &t["output"];
    println!(
        "  output {} MiB/s on a terminal, {} MiB/s piped (ratio {}); inside the guest alone {} vs {} (ratio {})",
        o["tty_mib_per_s"],
        o["pipe_mib_per_s"],
        o["tty_to_pipe_ratio"],
        o["in_guest_tty_mib_per_s"],
        o["in_guest_pipe_mib_per_s"],
        o["in_guest_tty_to_pipe_ratio"]
    );
    print_network(&report["network"]);
    print_sandboxes(&report["sandboxes"]);
    let r = &report["session_recording"];
    println!(
        "session recording: {} ms on the critical path (cold start ratio {}); writer {} events/s ({} of {} dropped)",
        r["critical_path_ms"],
        r["cold_start_ratio_with_to_without"],
        r["events_written_per_s"],
        r["events_dropped"],
        r["events_offered"]
    );
}

fn print_workspace(w: &Value) {
    let m = &w["mount"];
    println!(
        "workspace: run true {} ms bare, {} ms with {} files, {} ms with {} (ratio {})",
        median_of(&m["run_true_no_workspace_ms"]),
        median_of(&m["run_true_small_ms"]),
        m["files"][0],
        median_of(&m["run_true_large_ms"]),
        m["files"][1],
        m["ratio_large_to_small"]
    );
    let g = &w["git_status"];
    println!(
        "  git status, {} files: {} ms through the workspace, {} ms on tmpfs (ratio {})",
        g["files"],
        median_of(&g["workspace_ms"]),
        median_of(&g["guest_tmpfs_ms"]),
        g["ratio"]
    );
    let r = &w["sequential_read"];
    println!(
        "  read {} MiB: {} MiB/s through the workspace, {} MiB/s from the rootfs (ratio {})",
        r["mib"],
        median_of(&r["workspace_mib_per_s"]),
        median_of(&r["rootfs_mib_per_s"]),
        r["ratio"]
    );
    let d = &w["diff_apply"];
    println!(
        "  {} changed files: diff --stat {} ms, apply {} ms",
        d["files"],
        median_of(&d["diff_stat_ms"]),
        median_of(&d["apply_ms"])
    );
}

fn print_sandboxes(s: &Value) {
    println!("named sandboxes (ms):");
    let cold = &s["cold"];
    for (what, v) in [
        ("exec true, CLI", &s["exec_true_cli_ms"]),
        ("exec true, API alone", &s["exec_true_api_ms"]),
        ("create (to ready)", &s["create_ms"]),
        ("create, booted cold", &cold["create_ms"]),
        ("create to first output", &s["create_to_first_output_ms"]),
        (
            "  the same, booted cold",
            &cold["create_to_first_output_ms"],
        ),
        ("stop", &s["stop_ms"]),
        ("start", &s["start_ms"]),
        ("start, booted cold", &cold["start_ms"]),
        ("rm", &s["rm_ms"]),
    ] {
        line(what, v);
    }
    println!(
        "  guest's own fork+exec+wait of true {} ms; ratios: CLI/one-shot {}, CLI/guest {}, API/guest {}",
        s["guest_fork_exec_wait_ms"],
        s["ratio_cli_to_one_shot"],
        s["ratio_cli_to_guest"],
        s["ratio_api_to_guest"]
    );
    println!(
        "  from the template vs cold: create {}, start {}",
        s["ratio_create_to_cold"], s["ratio_start_to_cold"]
    );
    for (how, key) in [("template", "idle_pss_mib"), ("cold", "idle_pss_mib_cold")] {
        let Some(fleets) = s[key].as_object() else {
            continue;
        };
        let mut fleets: Vec<_> = fleets.iter().collect();
        fleets.sort_by_key(|(n, _)| n.parse::<usize>().unwrap_or(usize::MAX));
        for (n, v) in fleets {
            println!(
                "  {n:>2} idle sandboxes ({how}): {} MiB PSS in all, {} each",
                v["total"], v["per_sandbox"]
            );
        }
    }
    let r = &s["suspend_resume"];
    line("suspend, 256 MiB written", &r["suspend_ms"]);
    line("resume", &r["resume_ms"]);
    println!("  suspended state {} MiB", r["state_mib"]);
    let m = &s["memory_returned_mib"];
    println!(
        "  idle density, template over cold: {}; QEMU RSS {} MiB with 300 MiB written, {} MiB 10 s after the guest freed it",
        s["ratio_idle_density_to_cold"], m["held"], m["after_free"]
    );
}

fn print_network(n: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "network ({} requests each; ms p50/p99, MiB/s):",
        n["requests"]
    );
    for scheme in ["http", "https"] {
        let (req, dl) = (
            &n[scheme]["request_ms"],
            &n[scheme]["download_100mib_mib_per_s"],
        );
        for (what, key) in [
            ("host-direct", "host_direct"),
            ("guest loopback", "guest_loopback"),
            ("guest through proxy", "guest_through_proxy"),
        ] {
            if req[key].is_null() {
                continue;
            }
            println!(
                "  {scheme:<5} {what:<20} request {:>7.1} / {:>7.1}   100 MiB download {:>8.1}",
                f(&req[key]["p50"]),
                f(&req[key]["p99"]),
                f(&dl[key])
            );
        }
        println!(
            "  {scheme:<5} proxy overhead p50 {:.1} ms; download ratio {:.3} to host-direct",
            f(&req["overhead_p50"]),
            f(&dl["ratio"]),
        );
    }
    let loopback = &n["http"]["download_100mib_mib_per_s"]["ratio_to_guest_loopback"];
    println!(
        "  http download ratio to the guest's loopback {:.2}",
        f(loopback)
    );
}
