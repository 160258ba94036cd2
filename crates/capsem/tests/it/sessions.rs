//! Every run is recorded; `capsem sessions` looks back.

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Capsem, alive, assert_code, stderr, stdout, wait_until};

/// `capsem sessions --json`, parsed: newest first.
fn sessions(capsem: &Capsem) -> Vec<Value> {
    let records = capsem.json_lines(&["sessions", "--json"]);
    records
        .into_iter()
        .inspect(|record| assert_eq!(record["type"], "session"))
        .map(|record| record["data"].clone())
        .collect()
}

#[test]
fn a_run_is_recorded_with_its_exit_code_timings_and_events() {
    let capsem = Capsem::new();
    let out = capsem.run_with_stdin(&["-q", "cat; echo err >&2; exit 3"], b"input");
    assert_code(&out, 3);
    let rows = sessions(&capsem);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["status"], "exited");
    assert_eq!(row["exit_code"], 3);
    assert_eq!(row["command"], "cat; echo err >&2; exit 3");
    assert_eq!(row["lost_events"], 0);
    assert!(row["ended_at_ms"].as_i64().unwrap() >= row["started_at_ms"].as_i64().unwrap());
    for phase in [
        "assets_verified",
        "vm_spawned",
        "agent_ready",
        "command_done",
        "vm_gone",
    ] {
        assert!(
            row["phases"][format!("{phase}_ms")].is_number(),
            "{phase} missing: {row}"
        );
    }
    // `show` accepts a prefix and reports the events by kind.
    let id = row["id"].as_str().unwrap();
    let show = capsem.run(&["sessions", "show", &id[..4]]);
    assert_code(&show, 0);
    let text = stdout(&show);
    assert!(text.contains("exited with 3"), "{text}");
    assert!(text.contains("stdin"), "{text}");
    assert!(text.contains("stderr"), "{text}");
    assert!(text.contains(&format!("sessions/{id}/boot.log")), "{text}");
}

#[test]
fn failures_and_timeouts_are_recorded_as_such() {
    let capsem = Capsem::new();
    assert_code(&capsem.run(&["-q", "--timeout", "1", "sleep 60"]), 124);
    let out = capsem
        .cmd(&["-q", "true"])
        .env("CAPSEM_QEMU", "/bin/false")
        .output()
        .unwrap();
    assert_code(&out, 125);
    let rows = sessions(&capsem);
    let statuses: Vec<&str> = rows.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["failed", "timed_out"]);
    assert!(
        rows[0]["error"]
            .as_str()
            .unwrap()
            .contains("VM stopped during boot")
    );
}

#[test]
fn a_killed_capsem_leaves_a_session_repaired_to_killed() {
    let capsem = Capsem::new();
    let (mut child, qemu) = capsem.spawn_idle();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(wait_until(Duration::from_secs(10), || !alive(qemu)));
    let rows = sessions(&capsem);
    assert_eq!(rows[0]["status"], "killed");
    assert!(rows[0]["ended_at_ms"].is_number());
}

#[test]
fn concurrent_runs_are_all_recorded() {
    let capsem = Capsem::new();
    let children: Vec<_> = (0..3)
        .map(|i| {
            capsem
                .cmd(&["-q", &format!("exit {i}")])
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Each ran to its own exit, or says why not; what they said shows
    // why one is missing from the index, if one is.
    let mut said = String::new();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        said.push_str(&format!("run {i}: {}\n", stderr(&out)));
        assert_eq!(out.status.code(), Some(i as i32), "{said}");
    }
    let mut codes: Vec<i64> = sessions(&capsem)
        .iter()
        .map(|r| r["exit_code"].as_i64().unwrap())
        .collect();
    codes.sort();
    assert_eq!(codes, [0, 1, 2], "{said}");
    assert_code(&capsem.run(&["sessions", "inspect"]), 0);
}

#[test]
fn prune_keeps_the_newest_and_removes_their_directories() {
    let capsem = Capsem::new();
    assert_code(&capsem.run(&["-q", "true"]), 0);
    assert_code(&capsem.run(&["-q", "true"]), 0);
    let rows = sessions(&capsem);
    let out = capsem.run(&["sessions", "prune", "--keep", "1"]);
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "pruned 1 session\n");
    let left = sessions(&capsem);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], rows[0]["id"]);
    let old = capsem
        .home()
        .join("sessions")
        .join(rows[1]["id"].as_str().unwrap());
    assert!(!old.exists());
    assert_code(&capsem.run(&["sessions", "inspect"]), 0);
}

#[test]
fn inspect_detects_a_corrupted_database() {
    let capsem = Capsem::new();
    assert_code(&capsem.run(&["-q", "true"]), 0);
    assert_code(&capsem.run(&["sessions", "inspect"]), 0);
    // Overwrite the table's pages (everything after the 100-byte header
    // page) with garbage, as a disk error might.
    let db = capsem.home().join("sessions.db");
    let mut bytes = fs::read(&db).unwrap();
    for b in bytes.iter_mut().skip(4096) {
        *b = 0xa5;
    }
    fs::write(&db, bytes).unwrap();
    let out = capsem.run(&["sessions", "inspect"]);
    assert_code(&out, 1);
    assert!(stdout(&out).contains("PROBLEMS FOUND"), "{}", stdout(&out));
}

#[test]
fn an_ambiguous_or_unknown_prefix_is_a_clear_error() {
    let capsem = Capsem::new();
    let out = capsem.run(&["sessions", "show", "zzzz"]);
    assert_code(&out, 125);
    assert!(crate::support::stderr(&out).contains("no session matches 'zzzz'"));
}
