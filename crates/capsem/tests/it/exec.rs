//! Running commands: argv handling, exit codes, stdio.

use sha2::{Digest, Sha256};

use crate::support::{Capsem, assert_code, stderr, stdout};

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn uname_reports_the_guest_kernel() {
    let out = Capsem::new().run(&["-q", "uname", "-a"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.starts_with("Linux capsem 6.1."), "{text}");
    assert!(text.ends_with("GNU/Linux\n"), "{text}");
}

#[test]
fn one_argument_is_a_shell_command_line() {
    let out = Capsem::new().run(&["-q", "ls -la /proc/cpuinfo | wc -l; echo $((6 * 7))"]);
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "1\n42\n");
}

#[test]
fn several_arguments_are_an_exact_argv() {
    let out = Capsem::new().run(&["-q", "echo", "a  b", "$HOME", "*"]);
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "a  b $HOME *\n");
}

#[test]
fn exit_codes_are_the_commands_own() {
    let capsem = Capsem::new();
    assert_code(&capsem.run(&["-q", "run", "--", "sh", "-c", "exit 42"]), 42);
    assert_code(&capsem.run(&["-q", "false"]), 1);
    // Killed by SIGTERM (15): 128 + 15, as a shell reports it.
    assert_code(&capsem.run(&["-q", "kill -TERM $$"]), 143);
}

#[test]
fn a_missing_command_exits_127() {
    let capsem = Capsem::new();
    let out = capsem.run(&["-q", "no-such-command", "x"]);
    assert_code(&out, 127);
    assert!(
        stderr(&out).contains("no-such-command: command not found"),
        "{}",
        stderr(&out)
    );
    assert_code(&capsem.run(&["-q", "no-such-command"]), 127);
}

#[test]
fn stdout_and_stderr_stay_separate() {
    let out = Capsem::new().run(&["-q", "echo out; echo err >&2; echo out2"]);
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "out\nout2\n");
    assert_eq!(stderr(&out), "err\n");
}

#[test]
fn ten_mib_of_random_bytes_pass_through_stdin_and_stdout_unchanged() {
    let input: Vec<u8> = {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        (0..10 * 1024 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    let capsem = Capsem::new();
    let out = capsem.run_with_stdin(&["-q", "sha256sum"], &input);
    assert_code(&out, 0);
    let expected = sha256_hex(&input);
    assert_eq!(stdout(&out), format!("{expected}  -\n"));

    let out = capsem.run_with_stdin(&["-q", "cat"], &input);
    assert_code(&out, 0);
    assert!(
        out.stdout == input,
        "cat returned {} different bytes",
        out.stdout.len()
    );
}

#[test]
fn binary_stdout_matches_what_the_guest_wrote() {
    let script = "head -c 10485760 /dev/urandom | tee /tmp/data; sha256sum /tmp/data >&2";
    let out = Capsem::new().run(&["-q", script]);
    assert_code(&out, 0);
    assert_eq!(out.stdout.len(), 10 * 1024 * 1024);
    let host = sha256_hex(&out.stdout);
    assert_eq!(stderr(&out), format!("{host}  /tmp/data\n"));
}

#[test]
fn env_options_reach_the_command_and_defaults_are_clean() {
    let out = Capsem::new().run(&[
        "-q",
        "-e",
        "FOO=bar baz",
        "-e",
        "EMPTY=",
        "printf '%s|%s|%s|%s|%s\\n' \"$FOO\" \"${EMPTY-unset}\" \"$HOME\" \"$PWD\" \"$LANG\"; env | grep -c -e ^CAPSEM_HOME= -e ^CAPSEM_CORP",
    ]);
    assert_eq!(stdout(&out), "bar baz||/root|/root|C.UTF-8\n0\n");
}

#[test]
fn nothing_persists_between_runs() {
    let capsem = Capsem::new();
    assert_code(
        &capsem.run(&["-q", "echo data > /root/file && cat /root/file"]),
        0,
    );
    let out = capsem.run(&["-q", "cat /root/file"]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("No such file"), "{}", stderr(&out));
}

#[test]
fn a_write_to_the_system_is_gone_in_the_next_run() {
    let capsem = Capsem::new();
    let write = "echo planted > /usr/bin/capsem-planted && echo x >> /etc/passwd && cat /usr/bin/capsem-planted";
    let out = capsem.run(&["-q", write]);
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "planted\n");
    let out = capsem.run(&[
        "-q",
        "test -e /usr/bin/capsem-planted; echo $?; tail -c 2 /etc/passwd",
    ]);
    assert_code(&out, 0);
    assert!(
        stdout(&out).starts_with("1\n"),
        "the write survived: {}",
        stdout(&out)
    );
    assert!(!stdout(&out).ends_with("x\n"), "{}", stdout(&out));
    // guest.root = "read-only" keeps the image as it is.
    capsem.user_settings("[guest]\nroot = \"read-only\"\n");
    let out = capsem.run(&["-q", "touch /usr/bin/capsem-planted"]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_closed_stdout_gives_the_command_sigpipe() {
    // `yes` writes forever; the host side closes after one line.
    let capsem = Capsem::new();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{} -q yes | head -n 1; echo \"${{PIPESTATUS[0]}}\"",
            env!("CARGO_BIN_EXE_capsem")
        ))
        .env("CAPSEM_HOME", capsem.home())
        .env("CAPSEM_CORP_CONFIG", capsem.home().join("none"))
        .output()
        .unwrap();
    // 141 = 128 + SIGPIPE: the guest's `yes` died as it would locally.
    assert_eq!(stdout(&out), "y\n141\n", "{}", stderr(&out));
}
