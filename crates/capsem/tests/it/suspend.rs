//! Suspend and resume of named sandboxes: the VM's memory goes to the
//! sandbox's directory and its QEMU ends; a resume continues it where it
//! was, running commands and their clients included.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use crate::sandboxes::{Service, kill9, supervisor_pid};
use crate::support::{alive, assert_code, children_of, stderr, stdout, wait_until};

fn state_file(service: &Service, name: &str) -> std::path::PathBuf {
    service
        .capsem
        .home()
        .join("sandboxes")
        .join(name)
        .join("suspended.state")
}

fn refused(service: &Service, args: &[&str], words: &str) {
    let out = service.run(args);
    assert_code(&out, 125);
    assert!(stderr(&out).contains(words), "{args:?}: {}", stderr(&out));
}

#[test]
fn a_suspended_sandbox_resumes_where_it_was_and_its_running_command_finishes() {
    let service = Service::new();
    service.ok(&["create", "-n", "nap"]);
    service.ok(&["exec", "nap", "echo memory > /tmp/m; echo disk > /root/d"]);
    let boot_id = service.ok(&["exec", "nap", "cat /proc/sys/kernel/random/boot_id"]);
    let mut sleeper = service
        .capsem
        .cmd(&["exec", "nap", "sleep 3; echo done"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // A terminal session open across the suspend.
    let mut shell = service
        .capsem
        .cmd(&["exec", "-t", "nap", "read x; echo got-$x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let qemu = children_of(supervisor_pid(&service, "nap"));
    assert!(!qemu.is_empty());

    assert_eq!(service.ok(&["suspend", "nap"]), "nap\n");
    assert_eq!(service.state("nap"), "suspended");
    assert!(state_file(&service, "nap").is_file());
    assert!(wait_until(Duration::from_secs(10), || qemu
        .iter()
        .all(|&q| !alive(q))));
    refused(&service, &["exec", "nap", "true"], "capsem resume nap");
    refused(&service, &["suspend", "nap"], "suspended");
    // Its clock is stopped with it: the sleep does not end meanwhile.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        sleeper.try_wait().unwrap().is_none(),
        "the command ended while suspended"
    );

    assert_eq!(service.ok(&["resume", "nap"]), "nap\n");
    assert_eq!(service.state("nap"), "running");
    assert!(!state_file(&service, "nap").exists());
    let out = sleeper.wait_with_output().unwrap();
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "done\n");
    shell.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let out = shell.wait_with_output().unwrap();
    assert_code(&out, 0);
    assert!(stdout(&out).contains("got-hi"), "{}", stdout(&out));
    // The same boot, its memory intact, its clock the host's again.
    assert_eq!(
        service.ok(&["exec", "nap", "cat /tmp/m /root/d"]),
        "memory\ndisk\n"
    );
    assert_eq!(
        service.ok(&["exec", "nap", "cat /proc/sys/kernel/random/boot_id"]),
        boot_id
    );
    let guest: i64 = service
        .ok(&["exec", "nap", "date +%s"])
        .trim()
        .parse()
        .unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((host - guest).abs() < 3, "guest {guest}, host {host}");
    refused(&service, &["resume", "nap"], "not suspended");

    // Suspended again and stopped, its memory is discarded, its disk kept.
    service.ok(&["suspend", "nap"]);
    service.ok(&["stop", "nap"]);
    assert_eq!(service.state("nap"), "stopped");
    assert!(!state_file(&service, "nap").exists());
    refused(&service, &["suspend", "nap"], "stopped");
    service.ok(&["start", "nap"]);
    assert_eq!(
        service.ok(&["exec", "nap", "cat /root/d; test ! -e /tmp/m"]),
        "disk\n"
    );
    // `start` continues a suspended sandbox too.
    service.ok(&["suspend", "nap"]);
    service.ok(&["start", "nap"]);
    assert_eq!(service.state("nap"), "running");
    assert_eq!(service.ok(&["exec", "nap", "cat /root/d"]), "disk\n");
}

#[test]
fn a_workspace_sandbox_suspends_and_a_supervisor_killed_meanwhile_keeps_the_disk() {
    let service = Service::new();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("README"), "hello\n").unwrap();
    let ws = project.path().to_str().unwrap();
    service.ok(&["create", "-n", "ws", "-w", ws]);
    // Not synced by the command: the suspend syncs it.
    service.ok(&["exec", "ws", "echo kept > /root/k"]);
    service.ok(&["suspend", "ws"]);
    refused(&service, &["diff", "ws"], "suspended");
    service.ok(&["resume", "ws"]);
    // The project is served through the same channel as before.
    assert_eq!(service.ok(&["exec", "ws", "cat README"]), "hello\n");

    service.ok(&["suspend", "ws"]);
    kill9(supervisor_pid(&service, "ws"));
    assert!(wait_until(Duration::from_secs(10), || service.state("ws") == "stopped"));
    service.ok(&["start", "ws"]);
    assert!(!state_file(&service, "ws").exists());
    assert_eq!(service.ok(&["exec", "ws", "cat /root/k"]), "kept\n");
}
