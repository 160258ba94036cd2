//! Boot templates: runs and named sandboxes resume a snapshot of a booted
//! VM, every restored VM is its own, a tampered template is refused, and
//! `vm.snapshot_start = false` still boots cold (exec, terminal, named
//! sandboxes and doctor's sandbox checks run both ways; the network's cold
//! run is in `network`), and memory the guest frees goes back to the host.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::sandboxes::Service;
use crate::support::{Capsem, assert_code, stderr, stdout, wait_until};

/// What the VM must not share with its siblings, one per line: 64 bytes
/// of `/dev/urandom`, the kernel's boot id, the machine-id, the wall clock.
const IDENTITY: &str = "head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
    cat /proc/sys/kernel/random/boot_id /etc/machine-id; date +%s";

pub const COLD: &str = "[vm]\nsnapshot_start = false\n";

fn phases(capsem: &Capsem) -> Value {
    let rows = capsem.json_lines(&["sessions", "--json", "-n", "1"]);
    rows[0]["data"]["phases"].clone()
}

fn identity(capsem: &Capsem) -> Vec<String> {
    let out = capsem.run(&["-q", IDENTITY]);
    assert_code(&out, 0);
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    lines
}

#[test]
fn restored_vms_differ_in_rng_boot_id_and_machine_id_and_keep_the_hosts_time() {
    let capsem = Capsem::new();
    let runs: Vec<Vec<String>> = (0..2).map(|_| identity(&capsem)).collect();
    assert!(phases(&capsem)["template_ready_ms"].is_number());
    assert!(phases(&capsem)["kernel_started_ms"].is_null());
    let cold = Capsem::new();
    cold.user_settings(COLD);
    let cold_run = identity(&cold);
    assert!(phases(&cold)["template_ready_ms"].is_null());
    for field in 0..3 {
        let seen: HashSet<&str> = [&runs[0], &runs[1], &cold_run]
            .iter()
            .map(|r| r[field].as_str())
            .collect();
        assert_eq!(
            seen.len(),
            3,
            "field {field} repeats: {runs:?} {cold_run:?}"
        );
    }
    assert_eq!(runs[0][0].len(), 128);
    assert_eq!(runs[0][2].len(), 32);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for run in &runs {
        let guest: i64 = run[3].parse().unwrap();
        assert!((now - guest).abs() < 120, "guest clock {guest}, host {now}");
    }
}

/// A capsem whose templates are its own, so that it may break them.
fn private_templates() -> (Capsem, PathBuf) {
    let capsem = Capsem::new();
    let cache = capsem.home().join("cache");
    (capsem, cache.join("capsem/templates"))
}

fn run_with_cache(capsem: &Capsem, args: &[&str]) -> std::process::Output {
    let mut cmd = capsem.cmd(args);
    cmd.env("XDG_CACHE_HOME", capsem.home().join("cache"));
    cmd.output().unwrap()
}

#[test]
fn the_template_is_built_once_and_a_tampered_one_is_refused() {
    let (capsem, templates) = private_templates();
    let first = run_with_cache(&capsem, &["echo", "one"]);
    assert_code(&first, 0);
    assert_eq!(stdout(&first), "one\n");
    assert!(
        stderr(&first).contains("building the boot template"),
        "{}",
        stderr(&first)
    );
    let second = run_with_cache(&capsem, &["echo", "two"]);
    assert_code(&second, 0);
    assert!(!stderr(&second).contains("building"), "{}", stderr(&second));

    let dirs: Vec<PathBuf> = fs::read_dir(&templates)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let state = dirs[0].join("state");
    // One flipped byte of guest memory, size and mtime kept.
    let mtime = fs::metadata(&state).unwrap().modified().unwrap();
    let file = fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&state)
        .unwrap();
    let mut byte = [0u8];
    let at = file.metadata().unwrap().len() / 2;
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    let refused = run_with_cache(&capsem, &["echo", "three"]);
    assert_code(&refused, 125);
    let text = stderr(&refused);
    assert!(text.contains("next run builds it again"), "{text}");
    assert!(
        text.contains("the boot template asset") && text.contains("does not match"),
        "{text}"
    );
    assert!(text.contains("refusing to boot it"), "{text}");
    assert_eq!(stdout(&refused), "");

    // Removed, it is built again.
    fs::remove_dir_all(&dirs[0]).unwrap();
    let rebuilt = run_with_cache(&capsem, &["echo", "four"]);
    assert_code(&rebuilt, 0);
    assert!(stderr(&rebuilt).contains("building the boot template"));
}

#[test]
fn cold_boots_run_commands_terminals_and_doctors_sandbox_checks() {
    let capsem = Capsem::new();
    capsem.user_settings(COLD);
    let out = capsem.run(&["-q", "echo out; echo err >&2; exit 3"]);
    assert_code(&out, 3);
    assert_eq!(
        (stdout(&out), stderr(&out)),
        ("out\n".into(), "err\n".into())
    );
    assert!(phases(&capsem)["kernel_started_ms"].is_number());
    assert!(phases(&capsem)["template_ready_ms"].is_null());

    let out = capsem.run(&[
        "-q",
        "run",
        "-t",
        "--",
        "sh",
        "-c",
        "test -t 0 && echo on-a-tty",
    ]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("on-a-tty\r\n"), "{}", stdout(&out));

    let out = capsem.run(&["-q", "doctor", "-k", "test_sandbox"]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains(" passed"), "{}", stdout(&out));
    assert!(!stdout(&out).contains("failed"), "{}", stdout(&out));
}

/// The newest `n` sessions' phases.
fn last_phases(capsem: &Capsem, n: usize) -> Vec<Value> {
    let rows = capsem.json_lines(&["sessions", "--json", "-n", &n.to_string()]);
    rows.iter().map(|r| r["data"]["phases"].clone()).collect()
}

/// Writes a file to `/root` of `name`, stops and starts it, and reads the
/// file back from its disk.
fn keeps_its_disk(service: &Service, name: &str) {
    service.ok(&["exec", name, "echo kept > /root/f"]);
    service.ok(&["stop", name]);
    service.ok(&["start", name]);
    assert_eq!(service.ok(&["exec", name, "cat /root/f"]), "kept\n");
    let fstype = service.ok(&["exec", name, "findmnt -n -o FSTYPE /root | tail -1"]);
    assert_eq!(fstype, "ext4\n");
}

#[test]
fn named_sandboxes_resume_the_template_with_their_own_disk_and_identity() {
    let service = Service::new();
    for name in ["a", "b"] {
        service.ok(&["create", "-n", name]);
    }
    let ids: Vec<String> = ["a", "b"]
        .iter()
        .map(|name| service.ok(&["exec", name, IDENTITY]))
        .collect();
    let a: Vec<&str> = ids[0].lines().collect();
    let b: Vec<&str> = ids[1].lines().collect();
    for field in 0..3 {
        assert_ne!(a[field], b[field], "field {field}: {ids:?}");
    }
    // Each mounts its own disk, not the template's blank one.
    service.ok(&["exec", "a", "echo only-a > /root/mine"]);
    assert_code(&service.run(&["exec", "b", "test ! -e /root/mine"]), 0);
    keeps_its_disk(&service, "a");
    // A boot's phases are recorded when it ends.
    service.ok(&["stop", "a"]);
    service.ok(&["stop", "b"]);
    for phases in last_phases(&service.capsem, 3) {
        assert!(phases["template_ready_ms"].is_number(), "{phases}");
        assert!(phases["kernel_started_ms"].is_null(), "{phases}");
    }
}

#[test]
fn a_cold_booted_named_sandbox_keeps_its_disk_too() {
    let service = Service::new();
    service.capsem.user_settings(COLD);
    service.ok(&["create", "-n", "cold"]);
    keeps_its_disk(&service, "cold");
    service.ok(&["stop", "cold"]);
    for phases in last_phases(&service.capsem, 2) {
        assert!(phases["kernel_started_ms"].is_number(), "{phases}");
        assert!(phases["template_ready_ms"].is_null(), "{phases}");
    }
}

fn host_rss_mib(service: &Service, name: &str) -> u64 {
    let all = service.list();
    let found = all.iter().find(|s| s["name"] == name).expect("listed");
    found["host_rss_kib"]
        .as_u64()
        .expect("a running sandbox's RSS")
        / 1024
}

#[test]
fn memory_the_guest_frees_goes_back_to_the_host() {
    let service = Service::new();
    service.ok(&["create", "-n", "mem"]);
    // 300 MiB of guest tmpfs pages, each written.
    service.ok(&["exec", "mem", "head -c 300M /dev/zero > /dev/shm/fill"]);
    let held = host_rss_mib(&service, "mem");
    service.ok(&["exec", "mem", "rm /dev/shm/fill"]);
    // The guest reports freed pages after about two seconds.
    let mut now = held;
    let returned = wait_until(Duration::from_secs(60), || {
        now = host_rss_mib(&service, "mem");
        now + 200 <= held
    });
    assert!(
        returned,
        "QEMU held {held} MiB, still {now} MiB after the free"
    );
}
