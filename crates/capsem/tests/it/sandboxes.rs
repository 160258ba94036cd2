//! Named sandboxes behind the capsem service: create, exec, stop/start
//! with a persistent /root, rm, and the faults around them.

use std::process::Output;
use std::time::Duration;

use crate::support::{Capsem, alive, assert_code, stderr, stdout, wait_until};

/// A capsem home whose service and sandboxes are torn down at the end.
pub struct Service {
    pub capsem: Capsem,
}

impl Service {
    pub fn new() -> Self {
        Service {
            capsem: Capsem::new(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.capsem.run(args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_code(&out, 0);
        stdout(&out)
    }

    /// `capsem ls --json`, each record checked against docs/json.md.
    pub fn list(&self) -> Vec<serde_json::Value> {
        if self.ok(&["ls", "--json"]).is_empty() {
            return Vec::new();
        }
        let schemas = crate::json::schemas();
        let records = crate::json::check(&self.capsem, &["ls", "--json"], &schemas);
        records.into_iter().map(|r| r["data"].clone()).collect()
    }

    pub fn state(&self, name: &str) -> String {
        let all = self.list();
        let found = all.iter().find(|s| s["name"] == name).expect("listed");
        found["state"].as_str().unwrap().to_owned()
    }

    fn service_pid(&self) -> u32 {
        let schemas = crate::json::schemas();
        let info = crate::json::check(&self.capsem, &["service", "status", "--json"], &schemas);
        info[0]["data"]["pid"].as_u64().unwrap() as u32
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let listed = stdout(&self.run(&["ls", "--json"]));
        for line in listed.lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            self.run(&["rm", "-f", record["data"]["name"].as_str().unwrap_or("")]);
        }
        self.run(&["service", "stop"]);
    }
}

#[test]
fn a_named_sandbox_runs_many_commands_and_keeps_root_across_stop_and_start() {
    let service = Service::new();
    assert_eq!(
        service
            .ok(&["create", "-n", "web-1", "-e", "GREETING=hi"])
            .trim(),
        "web-1"
    );
    // An unambiguous prefix will do; the create's environment holds.
    assert_eq!(
        service
            .ok(&[
                "exec",
                "web",
                "echo $GREETING; echo kept > /root/f; touch /etc/gone"
            ])
            .trim(),
        "hi"
    );
    assert_code(&service.run(&["exec", "web-1", "exit 7"]), 7);
    let out = service
        .capsem
        .run_with_stdin(&["exec", "web-1", "tr a-z A-Z"], b"piped in");
    assert_eq!(stdout(&out), "PIPED IN");
    assert_eq!(service.state("web-1"), "running");
    // Its boot is a session: net log takes the sandbox's name.
    assert_code(&service.run(&["net", "log", "web-1"]), 0);

    let again = service.run(&["create", "-n", "web-1"]);
    assert_code(&again, 125);
    assert!(stderr(&again).contains("exists"), "{}", stderr(&again));

    assert_eq!(service.ok(&["stop", "web-1"]).trim(), "web-1");
    assert_eq!(service.state("web-1"), "stopped");
    let stopped = service.run(&["exec", "web-1", "true"]);
    assert_code(&stopped, 125);
    assert!(stderr(&stopped).contains("stopped"), "{}", stderr(&stopped));

    service.ok(&["start", "web-1"]);
    assert_eq!(service.ok(&["exec", "web-1", "cat /root/f"]), "kept\n");
    // The system overlay is the boot's: only /root is the sandbox's disk.
    assert_code(&service.run(&["exec", "web-1", "test ! -e /etc/gone"]), 0);

    let running = service.run(&["rm", "web-1"]);
    assert_code(&running, 125);
    assert!(stderr(&running).contains("running"), "{}", stderr(&running));
    service.ok(&["rm", "-f", "web-1"]);
    assert!(service.list().is_empty());
    assert!(!service.capsem.home().join("sandboxes/web-1").exists());
}

#[test]
fn a_timeout_kills_the_command_and_the_sandbox_runs_on() {
    let service = Service::new();
    let name = service.ok(&["create"]);
    let name = name.trim();
    let (adjective, noun) = name.split_once('-').expect("an adjective-noun name");
    assert!(!adjective.is_empty() && !noun.is_empty(), "{name}");
    let out = service.run(&["exec", "--timeout", "2", name, "sleep 60"]);
    assert_code(&out, 124);
    assert!(stderr(&out).contains("runs on"), "{}", stderr(&out));
    assert_code(&service.run(&["exec", name, "true"]), 0);
    bad_exec_requests_are_answered_and_harm_nothing(&service, name);
    let logs = service.ok(&["logs", name]);
    assert!(logs.contains("started: sleep 60"), "{logs}");
    assert!(logs.contains("timed out and was killed"), "{logs}");
    assert!(
        logs.contains("started: true") && logs.contains("exited 0"),
        "{logs}"
    );
    // The boot log comes first.
    assert!(
        logs.find("capsem-agent").unwrap_or(usize::MAX) < logs.find("exec 1").unwrap_or(0),
        "{logs}"
    );
}

#[test]
fn no_more_than_max_running_run_and_rm_ends_a_streaming_exec() {
    let service = Service::new();
    service.capsem.user_settings("[sandbox]\nmax_running = 1\n");
    service.ok(&["service", "start"]);
    // Two creates at once: the bound holds while both are booting.
    let spawn = |name: &str| {
        service
            .capsem
            .cmd(&["create", "-n", name])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("only"), spawn("second"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (won, refused) = if a.status.success() { (a, b) } else { (b, a) };
    assert_code(&won, 0);
    if stdout(&won).trim() != "only" {
        service.ok(&["rm", "-f", stdout(&won).trim()]);
        service.ok(&["create", "-n", "only"]);
    }
    assert_code(&refused, 125);
    assert!(
        stderr(&refused).contains("sandbox.max_running"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(service.list().len(), 1, "a refused create leaves nothing");

    let mut streaming = service
        .capsem
        .cmd(&["exec", "only", "echo started; sleep 600"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(crate::support::read_line(&mut streaming), "started\n");
    service.ok(&["rm", "-f", "only"]);
    let out = streaming.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(!stderr(&out).is_empty());
}

/// Open descriptors and threads of a process.
fn fds_and_threads(pid: u32) -> (usize, usize) {
    let count =
        |what: &str| std::fs::read_dir(format!("/proc/{pid}/{what}")).map_or(0, |d| d.count());
    (count("fd"), count("task"))
}

#[test]
fn five_hundred_execs_leave_nothing_behind_on_the_host_or_in_the_guest() {
    let service = Service::new();
    service.ok(&["create", "-n", "busy"]);
    // User processes only: kernel threads (no command line) come and go.
    let guest_processes = || {
        let count = "n=0; for p in /proc/[0-9]*; do read -r -d '' c < $p/cmdline 2>/dev/null && n=$((n+1)); done; echo $n";
        service.ok(&["exec", "busy", count])
    };
    let run_execs = |n: usize| {
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..n / 4 {
                        assert_code(&service.run(&["exec", "busy", "echo x >/dev/null"]), 0);
                    }
                });
            }
        });
    };
    run_execs(20);
    let supervisor = supervisor_pid(&service, "busy");
    let daemon = service.service_pid();
    let sample = || {
        let ((sup_fds, sup_threads), (svc_fds, svc_threads)) =
            (fds_and_threads(supervisor), fds_and_threads(daemon));
        (
            sup_fds,
            svc_fds,
            guest_processes(),
            sup_threads + svc_threads,
        )
    };
    let before = sample();
    run_execs(500);
    // Not a timing check: the last execs' tasks may take a moment to end,
    // and idle blocking-pool threads linger for 10 s. A leak would grow
    // with the 500 execs; a few pool threads more or less are not one.
    let settled = wait_until(Duration::from_secs(20), || {
        let now = sample();
        now.0 <= before.0 && now.1 <= before.1 && now.2 == before.2 && now.3 <= before.3 + 4
    });
    assert!(settled, "before {before:?}, after {:?}", sample());
}

#[test]
fn twenty_sandboxes_created_and_removed_leave_no_file_socket_or_process() {
    let service = Service::new();
    let names: Vec<String> = (0..20).map(|i| format!("many-{i}")).collect();
    std::thread::scope(|scope| {
        for chunk in names.chunks(5) {
            let service = &service;
            scope.spawn(move || {
                for name in chunk {
                    service.ok(&["create", "-n", name, "--cpus", "1", "--memory", "384"]);
                }
            });
        }
    });
    assert_eq!(service.list().len(), 20);
    let daemon = service.service_pid();
    let supervisors = crate::support::children_of(daemon);
    assert_eq!(supervisors.len(), 20, "one supervisor each");
    for name in &names {
        service.ok(&["rm", "-f", name]);
    }
    assert!(service.list().is_empty());
    let left: Vec<_> = std::fs::read_dir(service.capsem.home().join("sandboxes"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(wait_until(Duration::from_secs(10), || supervisors
        .iter()
        .all(|&p| !alive(p))));
    assert!(
        crate::support::children_of(daemon)
            .iter()
            .all(|&p| !alive(p))
    );
}

#[test]
fn bad_and_missing_names_are_refused_with_a_message() {
    let service = Service::new();
    for bad in ["Web", "a_b", "../x", "-x", "", &"a".repeat(64)] {
        let out = service.run(&["create", &format!("--name={bad}")]);
        assert_code(&out, 125);
        assert!(
            stderr(&out).contains("not a sandbox name"),
            "{bad}: {}",
            stderr(&out)
        );
    }
    for args in [
        &["exec", "nothing", "true"][..],
        &["stop", "nothing"],
        &["start", "nothing"],
        &["rm", "nothing"],
    ] {
        let out = service.run(args);
        assert_code(&out, 125);
        assert!(
            stderr(&out).contains("no sandbox is named"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn two_creates_of_one_name_race_and_one_wins() {
    let service = Service::new();
    service.ok(&["service", "start"]);
    let spawn = || {
        service
            .capsem
            .cmd(&["create", "-n", "twin"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let mut codes = [a.status.code(), b.status.code()];
    codes.sort();
    assert_eq!(
        codes,
        [Some(0), Some(125)],
        "{}\n{}",
        stderr(&a),
        stderr(&b)
    );
    let loser = if a.status.success() { &b } else { &a };
    assert!(stderr(loser).contains("exists"), "{}", stderr(loser));
}

#[test]
fn another_uid_is_refused_by_the_service() {
    use std::os::unix::fs::PermissionsExt;
    let service = Service::new();
    service.ok(&["service", "start"]);
    if !nix_is_root() {
        return;
    }
    let home = service.capsem.home();
    // A copy of the binary nobody can run (the build tree may be private).
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = bin_dir.path().join("capsem");
    std::fs::copy(env!("CARGO_BIN_EXE_capsem"), &bin).unwrap();
    for path in [bin_dir.path(), bin.as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let nobody = |args: &[&str]| {
        let mut cmd = std::process::Command::new("runuser");
        cmd.args(["-u", "nobody", "--"])
            .arg(&bin)
            .args(args)
            .env("CAPSEM_HOME", home)
            .env("CAPSEM_CORP_CONFIG", home.join("no-corp.toml"));
        crate::support::run_with_stdin(cmd, b"")
    };
    // The socket's directory is private...
    let out = nobody(&["ls"]);
    assert_code(&out, 125);
    // ...and were it reachable, the socket itself refuses other uids.
    let open = std::fs::Permissions::from_mode(0o777);
    for dir in [home.to_path_buf(), home.join("run")] {
        std::fs::set_permissions(&dir, open.clone()).unwrap();
    }
    std::fs::set_permissions(home.join("run/capsem.sock"), open).unwrap();
    let out = nobody(&["ls"]);
    assert_code(&out, 125);
    assert!(stderr(&out).contains("refused"), "{}", stderr(&out));
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

#[test]
fn sandboxes_outlive_a_killed_service_and_a_killed_supervisor_takes_its_vm() {
    let service = Service::new();
    service.ok(&["create", "-n", "tough"]);
    service.ok(&["exec", "tough", "echo safe > /root/kept; sync"]);
    let pid = service.service_pid();
    kill9(pid);
    assert!(wait_until(Duration::from_secs(10), || !alive(pid)));
    // The next command starts a new service, which finds the sandbox.
    assert_eq!(service.ok(&["exec", "tough", "cat /root/kept"]), "safe\n");
    assert_ne!(service.service_pid(), pid);

    let supervisor = supervisor_pid(&service, "tough");
    let qemu = crate::support::children_of(supervisor);
    assert!(!qemu.is_empty(), "the supervisor runs QEMU");
    kill9(supervisor);
    assert!(wait_until(Duration::from_secs(10), || qemu
        .iter()
        .all(|&q| !alive(q))));
    assert!(wait_until(Duration::from_secs(10), || service
        .state("tough")
        == "stopped"));
    // The disk was synced before the kill; its journal brings it back.
    service.ok(&["start", "tough"]);
    assert_eq!(service.ok(&["exec", "tough", "cat /root/kept"]), "safe\n");
    // The killed boot's session is marked so.
    let sessions = service.ok(&["sessions", "--json", "-n", "0"]);
    assert!(sessions.contains("\"killed\""), "{sessions}");
}

pub fn kill9(pid: u32) {
    let out = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// The supervisor of `name`: the process holding its socket, found by its
/// command line.
pub fn supervisor_pid(service: &Service, name: &str) -> u32 {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let words: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let home = format!("CAPSEM_HOME={}", service.capsem.home().display());
        if words.get(1) == Some(&&b"supervise"[..])
            && words.get(2) == Some(&name.as_bytes())
            && environ.split(|b| *b == 0).any(|v| v == home.as_bytes())
        {
            return pid;
        }
    }
    panic!("no supervisor of {name}");
}

#[test]
fn files_copy_in_and_out_and_a_hostile_tree_lands_nowhere() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
    let service = Service::new();
    service.ok(&["create", "-n", "files"]);
    let host = tempfile::tempdir().unwrap();
    let src = host.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/run.sh"), b"#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(
        src.join("sub/run.sh"),
        std::fs::Permissions::from_mode(0o751),
    )
    .unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    std::fs::File::options()
        .write(true)
        .open(src.join("sub/run.sh"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    symlink("/etc/hostname", src.join("link")).unwrap();
    let src_arg = src.to_str().unwrap();

    service.ok(&["cp", src_arg, "files:/root/"]);
    let listing = service.ok(&[
        "exec",
        "files",
        "stat -c '%a %Y' /root/src/sub/run.sh; readlink /root/src/link; /root/src/sub/run.sh",
    ]);
    assert_eq!(listing, "751 1500000000\n/etc/hostname\nran\n");
    // -L copies what a host symlink points to.
    service.ok(&["cp", "-L", src_arg, "files:/root/followed"]);
    let followed = service.ok(&["exec", "files", "test -f /root/followed/link && echo file"]);
    assert_eq!(followed, "file\n");

    let out = service
        .capsem
        .run_with_stdin(&["cp", "-", "files:in.txt"], b"from stdin");
    assert_code(&out, 0);
    assert_eq!(service.ok(&["cp", "files:/root/in.txt", "-"]), "from stdin");

    let back = host.path().join("back");
    service.ok(&["cp", "files:/root/src", back.to_str().unwrap()]);
    let meta = std::fs::metadata(back.join("sub/run.sh")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o751);
    assert_eq!(meta.modified().unwrap(), old);
    assert_eq!(
        std::fs::read_link(back.join("link")).unwrap(),
        std::path::Path::new("/etc/hostname")
    );

    // The guest plants a symlink out of the copy, a device and a setuid
    // file: only what is safe could land, and since not all of it is,
    // nothing does.
    service.ok(&[
        "exec",
        "files",
        "mkdir -p /root/evil && ln -s /etc /root/evil/x && cp /bin/true /root/evil/su && chmod 4755 /root/evil/su && mknod /root/evil/null c 1 3",
    ]);
    let evil = host.path().join("evil");
    let out = service.run(&["cp", "files:/root/evil", evil.to_str().unwrap()]);
    assert_code(&out, 125);
    assert!(
        stderr(&out).contains("only files, directories and symlinks"),
        "{}",
        stderr(&out)
    );
    assert!(!evil.exists());
    let names: Vec<_> = std::fs::read_dir(host.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".capsem-cp")),
        "{names:?}"
    );
    // Without the device, the rest lands, the setuid bit dropped.
    service.ok(&["exec", "files", "rm /root/evil/null"]);
    service.ok(&["cp", "files:/root/evil", evil.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_link(evil.join("x")).unwrap(),
        std::path::Path::new("/etc")
    );
    let su = std::fs::metadata(evil.join("su")).unwrap().mode() & 0o7777;
    assert_eq!(su, 0o755);

    let missing = service.run(&["cp", "files:/root/nothing", host.path().to_str().unwrap()]);
    assert_code(&missing, 125);
    assert!(stderr(&missing).contains("nothing"), "{}", stderr(&missing));
}

#[test]
fn an_idle_sandbox_stops_on_its_own_and_keeps_its_disk() {
    let service = Service::new();
    service
        .capsem
        .user_settings("[sandbox]\nidle_timeout_secs = 3\n");
    service.ok(&["create", "-n", "sleepy"]);
    service.ok(&["exec", "sleepy", "echo kept > /root/k"]);
    assert!(wait_until(Duration::from_secs(60), || service
        .state("sleepy")
        == "stopped"));
    service.ok(&["start", "sleepy"]);
    assert_eq!(service.ok(&["exec", "sleepy", "cat /root/k"]), "kept\n");
}

#[test]
fn a_shell_in_a_sandbox_leaves_it_running_and_signals_reach_exec() {
    use expectrl::Expect;
    let service = Service::new();
    service.ok(&["create", "-n", "term"]);
    let script = format!(
        "{} shell term; echo capsem-status=$?",
        env!("CARGO_BIN_EXE_capsem")
    );
    let home = service.capsem.home();
    let mut bash = std::process::Command::new("bash");
    bash.args(["-c", &script])
        .env("CAPSEM_HOME", home)
        .env("CAPSEM_CORP_CONFIG", home.join("no-corp.toml"))
        .env("TERM", "xterm-256color");
    let mut shell = expectrl::Session::spawn(bash).expect("a terminal");
    shell.set_expect_timeout(Some(Duration::from_secs(120)));
    shell.expect("root@capsem:~# ").unwrap();
    shell
        .send("stty size; echo $((40 + 2)) > /root/from-shell; exit 3\r")
        .unwrap();
    shell.expect("24 80").unwrap();
    shell.expect("capsem-status=3").unwrap();
    assert_eq!(service.state("term"), "running");
    assert_eq!(
        service.ok(&["exec", "term", "cat /root/from-shell"]),
        "42\n"
    );

    // Ctrl-C to the CLI reaches the command's process group in the guest.
    let mut exec = service
        .capsem
        .cmd(&[
            "exec",
            "term",
            "trap 'echo got it; exit 5' INT; echo ready; sleep 60 & wait",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(crate::support::read_line(&mut exec), "ready\n");
    let sent = std::process::Command::new("kill")
        .args(["-INT", &exec.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = exec.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got it\n");
}

/// A client of the API (the owner, but buggy or hostile) sends exec
/// requests that are not: each gets an error message, and the sandbox
/// goes on.
fn bad_exec_requests_are_answered_and_harm_nothing(service: &Service, name: &str) {
    use tungstenite::Message;
    let socket = service.capsem.home().join("run/capsem.sock");
    let first_answer = |first: Message| {
        let stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let url = format!("ws://localhost/v1/sandboxes/{name}/exec");
        let (mut ws, _) = tungstenite::client(url.as_str(), stream).unwrap();
        ws.send(first).unwrap();
        loop {
            match ws.read().unwrap() {
                Message::Text(text) => return text.to_string(),
                Message::Close(_) => return String::new(),
                _ => {}
            }
        }
    };
    let cases = [
        (
            Message::Binary(b"stdin before the request".to_vec().into()),
            "the first message must be",
        ),
        (Message::Text("not json".into()), "a bad exec request"),
        (
            Message::Text(r#"{"command":{"Shell":"true"},"sudo":true}"#.into()),
            "unknown field",
        ),
        (
            Message::Text(r#"{"command":{"Shell":"true"},"env":[["LD_PRELOAD","/x.so"]]}"#.into()),
            "LD_PRELOAD",
        ),
        (
            Message::Text(r#"{"command":{"Argv":[]}}"#.into()),
            "empty command",
        ),
    ];
    for (first, expected) in cases {
        let answer = first_answer(first);
        assert!(
            answer.contains("\"error\"") && answer.contains(expected),
            "{expected}: {answer}"
        );
    }
    // A message past the API's 1 MiB bound is refused, not buffered.
    let stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let url = format!("ws://localhost/v1/sandboxes/{name}/exec");
    let (mut ws, _) = tungstenite::client(url.as_str(), stream).unwrap();
    let _ = ws.send(Message::Binary(vec![0u8; 2 << 20].into()));
    let answered = std::iter::from_fn(|| ws.read().ok()).any(|m| m.is_text());
    assert!(!answered, "an oversized message was taken as a request");
    assert_code(&service.run(&["exec", name, "true"]), 0);
}
