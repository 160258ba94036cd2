//! The VM's life: streaming, signals, timeouts, and no QEMU left behind.

use std::process::Stdio;
use std::time::Duration;

use crate::support::{Capsem, alive, assert_code, read_line, stderr, stdout, wait_until};

#[test]
fn output_is_streamed_while_the_command_runs() {
    let capsem = Capsem::new();
    let mut child = capsem
        .cmd(&["-q", "echo first; sleep 30; echo second"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(read_line(&mut child), "first\n");
    // The first line arrived while the command is still sleeping.
    assert!(child.try_wait().unwrap().is_none());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn timeout_destroys_the_vm_and_exits_124() {
    let out = Capsem::new().run(&["-q", "--timeout", "2", "sleep", "600"]);
    assert_code(&out, 124);
    assert!(
        stderr(&out).contains("ran longer than 2 s"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sigint_reaches_the_guest_command_and_nothing_keeps_running() {
    let capsem = Capsem::new();
    let (mut child, qemu) = capsem.spawn_idle();
    // What a terminal's Ctrl-C does to the foreground process.
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    // sleep died of SIGINT in the guest: 128 + 2.
    assert_eq!(status.code(), Some(130));
    assert!(!alive(qemu), "QEMU {qemu} outlived capsem");
}

#[test]
fn sigkill_of_capsem_takes_the_vm_down() {
    let capsem = Capsem::new();
    let (mut child, qemu) = capsem.spawn_idle();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !alive(qemu)),
        "QEMU {qemu} survived SIGKILL of capsem"
    );
}

#[test]
fn three_vms_run_at_once() {
    let capsem = Capsem::new();
    let children: Vec<_> = (0..3)
        .map(|i| {
            capsem
                .cmd(&["-q", &format!("sleep 1; echo vm{i}")])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_code(&out, 0);
        assert_eq!(stdout(&out), format!("vm{i}\n"));
    }
    assert_eq!(capsem.sessions().len(), 3);
}

#[test]
fn every_run_leaves_private_logs_and_nothing_else() {
    use std::os::unix::fs::PermissionsExt;
    let capsem = Capsem::new();
    assert_code(&capsem.run(&["-q", "true"]), 0);
    let sessions = capsem.sessions();
    assert_eq!(sessions.len(), 1);
    let boot_log = std::fs::read_to_string(sessions[0].join("boot.log")).unwrap();
    assert!(boot_log.contains("capsem-agent"), "{boot_log}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sessions[0]), 0o700);
    let mut files: Vec<String> = std::fs::read_dir(&sessions[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .inspect(|p| assert_eq!(mode(p) & 0o077, 0, "{} is not private", p.display()))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    // No socket or runtime file anywhere: the VM's channel is a socket pair.
    assert_eq!(files, ["boot.log", "qemu.log", "session.db"]);
}
