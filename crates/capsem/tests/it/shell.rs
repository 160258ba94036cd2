//! The interactive shell, driven through a real pseudo-terminal as a person
//! would: type, read the screen, resize, press Ctrl-C.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use expectrl::{Expect, Session};

use crate::support::{Capsem, assert_code, children_of, stdout, wait_until};

const PROMPT: &str = "root@capsem:~# ";

/// Runs `capsem -q` in a shell on a new terminal, recording the terminal's
/// settings (`stty -g`) before and after into `dir`, and capsem's status.
fn spawn_shell(capsem: &Capsem, dir: &Path) -> expectrl::session::OsSession {
    let script = format!(
        "stty -g > {d}/before; {bin} -q; echo capsem-status=$?; stty -g > {d}/after",
        d = dir.display(),
        bin = env!("CARGO_BIN_EXE_capsem"),
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &script])
        .env("CAPSEM_HOME", capsem.home())
        .env("CAPSEM_CORP_CONFIG", capsem.home().join("no-corp.toml"))
        .env("TERM", "xterm-256color");
    let mut session = Session::spawn(cmd).expect("spawning capsem on a terminal");
    session.set_expect_timeout(Some(Duration::from_secs(120)));
    session
}

fn settings(dir: &Path, which: &str) -> String {
    let path = dir.join(which);
    let written = || fs::read_to_string(&path).is_ok_and(|s| s.ends_with('\n'));
    assert!(
        wait_until(Duration::from_secs(10), written),
        "{which} missing"
    );
    fs::read_to_string(path).unwrap()
}

#[test]
fn a_shell_runs_commands_and_follows_resizes() {
    let capsem = Capsem::new();
    let dir = tempfile::tempdir().unwrap();
    let mut shell = spawn_shell(&capsem, dir.path());
    shell.expect(PROMPT).unwrap();
    shell
        .send("stty size; echo hi $((40 + 2)); echo $TERM\r")
        .unwrap();
    shell.expect("24 80").unwrap();
    shell.expect("hi 42").unwrap();
    shell.expect("xterm-256color").unwrap();
    shell.expect(PROMPT).unwrap();
    shell.get_process_mut().set_window_size(120, 40).unwrap();
    // The resize travels beside the typed input, not in order with it:
    // ask until the guest's terminal has it.
    let resized = wait_until(Duration::from_secs(20), || {
        shell.send("stty size\r").unwrap();
        let size = shell.expect(PROMPT).unwrap();
        String::from_utf8_lossy(size.before()).contains("40 120")
    });
    assert!(resized, "the guest never saw the new size");
    shell
        .send("printf '\\xe2\\x9c\\x93 \\e[38;5;196mred\\e[0m\\n'\r")
        .unwrap();
    shell.expect("✓ \u{1b}[38;5;196mred").unwrap();
    shell.send("exit 3\r").unwrap();
    shell.expect("capsem-status=3").unwrap();
    assert_eq!(
        settings(dir.path(), "before"),
        settings(dir.path(), "after")
    );
}

#[test]
fn ctrl_c_interrupts_the_foreground_command_and_the_shell_survives() {
    let capsem = Capsem::new();
    let dir = tempfile::tempdir().unwrap();
    let mut shell = spawn_shell(&capsem, dir.path());
    shell.expect(PROMPT).unwrap();
    // A job that says when it has the terminal: when it starts, and when
    // it is continued (bash hands the terminal over before SIGCONT).
    shell
        .send(
            "job() ( trap 'echo resumed-$1' CONT; echo started-$1; while :; do sleep 0.2; done )\r",
        )
        .unwrap();
    shell.expect(PROMPT).unwrap();
    shell.send("job a\r").unwrap();
    shell.expect("started-a").unwrap();
    shell.send("\x03").unwrap();
    shell.expect(PROMPT).unwrap();
    shell.send("echo job-status=$?\r").unwrap();
    shell.expect("job-status=130").unwrap();
    shell.expect(PROMPT).unwrap();
    // Ctrl-Z stops the foreground job; fg brings it back for Ctrl-C.
    shell.send("job b\r").unwrap();
    shell.expect("started-b").unwrap();
    shell.send("\x1a").unwrap();
    shell.expect("Stopped").unwrap();
    shell.expect(PROMPT).unwrap();
    shell.send("fg\r").unwrap();
    shell.expect("resumed-b").unwrap();
    shell.send("\x03").unwrap();
    shell.expect(PROMPT).unwrap();
    shell.send("echo fg-status=$?\r").unwrap();
    shell.expect("fg-status=130").unwrap();
    shell.expect(PROMPT).unwrap();
    // Ctrl-D on an empty line ends the shell.
    shell.send("\x04").unwrap();
    shell.expect("capsem-status=0").unwrap();
    assert_eq!(
        settings(dir.path(), "before"),
        settings(dir.path(), "after")
    );
}

#[test]
fn full_screen_programs_work() {
    let capsem = Capsem::new();
    let dir = tempfile::tempdir().unwrap();
    let mut shell = spawn_shell(&capsem, dir.path());
    shell.expect(PROMPT).unwrap();
    shell.send("vim /tmp/notes\r").unwrap();
    shell.expect("\"/tmp/notes\"").unwrap();
    shell.send("ihello from vim\x1b:wq\r").unwrap();
    shell.expect(PROMPT).unwrap();
    shell.send("python3 -q\r").unwrap();
    shell.expect(">>> ").unwrap();
    shell.send("print(6 * 7)\r").unwrap();
    shell.expect("42").unwrap();
    shell.send("exit()\r").unwrap();
    shell.expect(PROMPT).unwrap();
    shell.send("cat /tmp/notes; exit\r").unwrap();
    shell.expect("hello from vim").unwrap();
    shell.expect("capsem-status=0").unwrap();
}

#[test]
fn the_terminal_is_restored_when_the_vm_is_killed() {
    let capsem = Capsem::new();
    let dir = tempfile::tempdir().unwrap();
    let mut shell = spawn_shell(&capsem, dir.path());
    shell.expect(PROMPT).unwrap();
    let bash = shell.get_process().pid().as_raw() as u32;
    let capsem_pid = children_of(bash)[0];
    let qemu = children_of(capsem_pid)[0];
    Command::new("kill")
        .args(["-KILL", &qemu.to_string()])
        .status()
        .unwrap();
    shell.expect("the VM stopped").unwrap();
    shell.expect("capsem-status=125").unwrap();
    assert_eq!(
        settings(dir.path(), "before"),
        settings(dir.path(), "after")
    );
}

#[test]
fn the_session_keeps_a_transcript_that_replays() {
    let capsem = Capsem::new();
    let dir = tempfile::tempdir().unwrap();
    let mut shell = spawn_shell(&capsem, dir.path());
    shell.expect(PROMPT).unwrap();
    shell.send("echo transcript-$((6 * 7))\r").unwrap();
    shell.expect("transcript-42").unwrap();
    shell.send("exit\r").unwrap();
    shell.expect("capsem-status=0").unwrap();
    let replay = capsem.run(&["sessions", "replay", &capsem.last_session_id()]);
    assert_code(&replay, 0);
    assert!(
        stdout(&replay).contains("transcript-42"),
        "{}",
        stdout(&replay)
    );
    let raw = fs::read(capsem.sessions()[0].join("transcript")).unwrap();
    assert!(raw.starts_with(b"CAPSEM-TTY-REC1\n"));
    // What was typed is there too, as input records.
    assert!(raw.windows(6).any(|w| w == b"echo t"));
}

#[test]
fn without_a_terminal_a_script_on_stdin_runs() {
    let capsem = Capsem::new();
    let out = capsem.run_with_stdin(&["-q"], b"echo from-script\nexit 4\n");
    assert_code(&out, 4);
    assert_eq!(stdout(&out), "from-script\n");
    let out = capsem.run(&["-q", "shell"]);
    assert_code(&out, 125);
    assert!(crate::support::stderr(&out).contains("needs a terminal"));
}

#[test]
fn run_t_gives_a_one_shot_command_a_terminal() {
    let out = Capsem::new().run(&[
        "-q",
        "run",
        "-t",
        "--",
        "sh",
        "-c",
        "tty; test -t 0 && echo on-a-tty; exit 5",
    ]);
    assert_code(&out, 5);
    let text = stdout(&out);
    assert!(text.contains("/dev/pts/"), "{text}");
    // A terminal turns \n into \r\n, as it would locally.
    assert!(text.contains("on-a-tty\r\n"), "{text}");
}

#[test]
fn a_terminal_whose_output_is_closed_is_hung_up() {
    // Without a hang-up, `yes` would block forever on a full terminal.
    let capsem = Capsem::new();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{} -q run -t -- yes | head -c 2 >/dev/null; echo \"${{PIPESTATUS[0]}}\"",
            env!("CARGO_BIN_EXE_capsem")
        ))
        .env("CAPSEM_HOME", capsem.home())
        .env("CAPSEM_CORP_CONFIG", capsem.home().join("none"))
        .output()
        .unwrap();
    // 129 = 128 + SIGHUP.
    assert_eq!(stdout(&out), "129\n", "{}", crate::support::stderr(&out));
}
