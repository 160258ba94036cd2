//! The command line's promises, as a user meets them: signals at any
//! moment, habits from docker and cargo, pipes that close early, and the
//! README's usage matching `--help`.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Capsem, alive, assert_code, children_of, stderr, stdout, wait_until};

/// Sends `signal` to a `capsem sleep 30` `after` its start; returns its
/// exit code and whether a VM outlived it.
fn signal_after(capsem: &Capsem, signal: &str, after: Duration) -> (Option<i32>, bool) {
    let mut child = capsem
        .cmd(&["-q", "sleep", "30"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let vms = children_of(child.id());
    std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let left = vms.iter().any(|pid| alive(*pid));
    (status.code(), left)
}

#[test]
fn a_signal_during_boot_ends_the_run_at_once() {
    let capsem = Capsem::new();
    // Early in the boot, late in it, and (on a fast host) after the
    // command started: 128+N every time, and no VM left.
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        for after in [300, 900, 1500] {
            let started = Instant::now();
            let (got, left) = signal_after(&capsem, signal, Duration::from_millis(after));
            assert_eq!(got, Some(code), "{signal} after {after} ms");
            assert!(!left, "a VM outlived capsem ({signal} after {after} ms)");
            // Not a timing assertion: 30 s would mean the signal was lost.
            assert!(
                started.elapsed() < Duration::from_secs(25),
                "{signal} after {after} ms was lost"
            );
        }
    }
    let rows = capsem.json_lines(&["sessions", "--json", "-n", "0"]);
    assert_eq!(rows.len(), 6);
    assert!(
        rows.iter()
            .all(|r| r["data"]["exit_code"] == 130 || r["data"]["exit_code"] == 143)
    );
}

#[test]
fn a_terminal_run_with_piped_input_ends_at_its_end() {
    let capsem = Capsem::new();
    let out = capsem.run_with_stdin(&["-q", "-t", "cat"], b"a\nb");
    assert_code(&out, 0);
    assert_eq!(stdout(&out).replace("\r\n", "\n"), "a\nba\nb");
    let out = capsem.run_with_stdin(&["-q", "-t", "wc", "-l"], b"1\n2\n3\n");
    assert!(stdout(&out).contains('3'), "{}", stdout(&out));
}

#[test]
fn a_killed_capsem_is_recorded_with_its_real_duration() {
    let capsem = Capsem::new();
    let (mut child, _) = capsem.spawn_idle();
    std::thread::sleep(Duration::from_secs(3));
    child.kill().unwrap();
    child.wait().unwrap();
    let rows = capsem.json_lines(&["sessions", "--json"]);
    let row = &rows[0]["data"];
    assert_eq!(row["status"], "killed");
    let lasted = row["ended_at_ms"].as_i64().unwrap() - row["started_at_ms"].as_i64().unwrap();
    assert!(lasted >= 2500, "recorded as lasting {lasted} ms");
}

#[test]
fn mistakes_are_refused_before_any_vm_boots() {
    let capsem = Capsem::new();
    for (args, says) in [
        (&["sesions"][..], "did you mean `capsem sessions`"),
        (&["completion", "bash"], "did you mean `capsem completions`"),
        (&["--jsn"], "unexpected argument '--jsn'"),
        (
            &["--timeout", "5", "sessions"],
            "--timeout is an option of runs",
        ),
        (&["-e", "X=1", "version"], "--env is an option of runs"),
        (&["settings", "-v"], "unexpected argument '-v'"),
    ] {
        let out = capsem.run(args);
        assert_code(&out, 125);
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    assert!(capsem.sessions().is_empty(), "a mistake booted a VM");
}

#[test]
fn run_options_work_where_they_belong() {
    let capsem = Capsem::new();
    capsem.user_settings("[vm]\ntimeout_secs = 1\n");
    // --timeout 0 lifts the configured limit; -e NAME passes capsem's own.
    let out = capsem
        .cmd(&[
            "-q",
            "--timeout",
            "0",
            "-e",
            "FROM_HOST",
            "sleep 2; echo $FROM_HOST",
        ])
        .env("FROM_HOST", "kept")
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "kept\n");
    let out = capsem.run(&["-q", "-e", "NOT_SET_ANYWHERE", "true"]);
    assert_code(&out, 125);
    assert!(
        stderr(&out).contains("NOT_SET_ANYWHERE is not set"),
        "{}",
        stderr(&out)
    );
    // The doctor takes run options.
    let out = capsem.run(&[
        "doctor",
        "-q",
        "--timeout",
        "300",
        "-k",
        "test_hostname_is_capsem",
    ]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("1 passed"), "{}", stdout(&out));
}

#[test]
fn a_reader_that_goes_away_ends_capsem_quietly() {
    let capsem = Capsem::new();
    assert_code(&capsem.run(&["-q", "true"]), 0);
    for args in [
        &["sessions", "-n", "1000"][..],
        &["settings", "list"],
        &["net", "log", "--json"],
        &["completions", "bash"],
        &["man"],
    ] {
        let mut child = capsem
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read one byte, then hang up, like `| head -c 1`.
        let mut first = [0u8; 1];
        let mut pipe = child.stdout.take().unwrap();
        let _ = pipe.read(&mut first);
        drop(pipe);
        let out = child.wait_with_output().unwrap();
        assert!(
            matches!(out.status.code(), Some(0 | 141)),
            "{args:?}: {:?} {}",
            out.status,
            stderr(&out)
        );
        assert!(
            !stderr(&out).contains("panicked"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn sessions_can_be_listed_all_pruned_dry_and_only_emptied_on_purpose() {
    let capsem = Capsem::new();
    for _ in 0..2 {
        assert_code(&capsem.run(&["-q", "true"]), 0);
    }
    assert_eq!(
        capsem
            .json_lines(&["sessions", "list", "--json", "-n", "0"])
            .len(),
        2
    );
    let text = stdout(&capsem.run(&["sessions", "-n", "0"]));
    assert!(!text.contains("no sessions yet"), "{text}");
    let dry = capsem.run(&["sessions", "prune", "--keep", "0", "--dry-run"]);
    assert!(
        stdout(&dry).contains("would prune 2 sessions"),
        "{}",
        stdout(&dry)
    );
    let refused = capsem.run(&["sessions", "prune", "--keep", "0"]);
    assert_code(&refused, 125);
    assert!(stderr(&refused).contains("--yes"), "{}", stderr(&refused));
    assert_eq!(capsem.sessions().len(), 2);
    assert_code(
        &capsem.run(&["sessions", "prune", "--keep", "0", "--yes"]),
        0,
    );
    assert!(capsem.sessions().is_empty());
}

#[test]
fn a_switched_off_provider_is_named_at_once() {
    let capsem = Capsem::new();
    capsem.user_settings("[ai.anthropic]\nallow = false\n");
    let out = capsem.run(&[
        "run",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "10",
        "https://api.anthropic.com/",
    ]);
    assert!(
        stderr(&out).contains("capsem: denied api.anthropic.com (ai.anthropic.allow = false)"),
        "{}",
        stderr(&out)
    );
    let log = capsem.json_lines(&["net", "log", "--json"]);
    let query = log
        .iter()
        .find(|r| r["data"]["name"] == "api.anthropic.com")
        .unwrap();
    assert_eq!(query["data"]["rule"], "ai.anthropic.allow = false");
    // The doctor tests the policy the session has: no leaks for it.
    let out = capsem.run(&["-q", "doctor", "-k", "network", "--json"]);
    let summary: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(summary["data"]["network_leaks"], 0, "{summary}");
    assert_code(&out, 0);
}

#[test]
fn a_doctor_on_a_terminal_says_what_it_is_doing() {
    let capsem = Capsem::new();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_capsem"));
    cmd.args(["doctor", "-k", "test_hostname_is_capsem"])
        .env("CAPSEM_HOME", capsem.home())
        .env("CAPSEM_CORP_CONFIG", capsem.home().join("no-corp.toml"));
    let mut session = expectrl::Session::spawn(cmd).unwrap();
    session.set_expect_timeout(Some(Duration::from_secs(120)));
    use expectrl::Expect;
    session.expect("booting a VM").unwrap();
    session.expect("running 1 check").unwrap();
    session.expect("1 passed").unwrap();
    assert!(wait_until(Duration::from_secs(30), || !session
        .get_process()
        .is_alive()
        .unwrap_or(false)));
}
