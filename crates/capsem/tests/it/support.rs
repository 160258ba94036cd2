//! Running the real `capsem` binary against the built assets.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A capsem with its own state directory, so tests never share sessions or
/// settings with each other or with the user.
pub struct Capsem {
    home: tempfile::TempDir,
}

impl Capsem {
    pub fn new() -> Self {
        Capsem {
            home: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Writes `~/.capsem/user.toml`.
    pub fn user_settings(&self, toml: &str) {
        fs::write(self.home().join("user.toml"), toml).unwrap();
    }

    /// A command for `capsem ARGS`, with a private home and no corp file,
    /// run from that home (outside any git work tree, so that an AI CLI
    /// gets no workspace unless a test gives it one).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_capsem"));
        cmd.args(args)
            .current_dir(self.home())
            .env("CAPSEM_HOME", self.home())
            .env("CAPSEM_CORP_CONFIG", self.home().join("no-corp.toml"))
            .env_remove("CAPSEM_ASSETS_DIR")
            .env_remove("CAPSEM_QEMU")
            .env_remove("CAPSEM_LOG");
        cmd
    }

    /// Runs `capsem ARGS` with `stdin` and collects everything.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_with_stdin(self.cmd(args), stdin)
    }

    /// Runs `capsem ARGS` with an empty stdin.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, b"")
    }

    /// `capsem ARGS` with JSON Lines output, parsed (`{"type", "data"}`
    /// records).
    pub fn json_lines(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let out = self.run(args);
        assert_code(&out, 0);
        stdout(&out)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The newest session's id.
    pub fn last_session_id(&self) -> String {
        let rows = self.json_lines(&["sessions", "--json", "-n", "1"]);
        rows[0]["data"]["id"].as_str().unwrap().to_owned()
    }

    /// Starts `capsem -q` with a guest command that prints `ready` and then
    /// sleeps; returns once it is ready, with QEMU's pid.
    pub fn spawn_idle(&self) -> (Child, u32) {
        let mut child = self
            .cmd(&["-q", "echo ready; exec sleep 600"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        assert_eq!(read_line(&mut child), "ready\n");
        let qemu = children_of(child.id());
        assert_eq!(qemu.len(), 1, "one VM monitor expected: {qemu:?}");
        (child, qemu[0])
    }

    /// The session directories created so far.
    pub fn sessions(&self) -> Vec<PathBuf> {
        fs::read_dir(self.home().join("sessions"))
            .map(|dir| dir.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }
}

pub fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning capsem");
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // The command may exit without reading everything.
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().expect("waiting for capsem");
    writer.join().unwrap();
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the exit code, showing capsem's stderr when it differs.
#[track_caller]
pub fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

/// Processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The command name may contain spaces; fields resume after ')'.
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
        let ppid = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

pub fn alive(pid: u32) -> bool {
    // A zombie has exited; only its parent's reaping is pending.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat[stat.rfind(')').unwrap_or(0)..].starts_with(") Z"))
}

/// Polls `cond` until it holds or `limit` passes. Not a timing assertion:
/// the limit only keeps a broken build from hanging the suite.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// Reads one line from a child's stdout.
pub fn read_line(child: &mut Child) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.as_mut().unwrap();
    let mut reader = std::io::BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line
}

/// The asset directory this capsem was built with (`capsem version`).
pub fn asset_dir() -> PathBuf {
    let out = Capsem::new().run(&["version"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("assets "))
        .and_then(|l| l.strip_suffix(" (build cache)"))
        .expect("capsem version names its asset directory, the build cache");
    PathBuf::from(line)
}

/// A `/proc/PID/status` field.
pub fn status_field(pid: u32, name: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// Peak RSS of a process in KiB.
pub fn peak_kib(pid: u32) -> u64 {
    status_field(pid, "VmHWM")
        .trim_end_matches(" kB")
        .parse()
        .unwrap_or(0)
}

/// What capsem's peak RSS must stay under, whatever the guest does.
pub const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// Waits for `child`, watching its peak RSS (KiB) while it runs.
pub fn wait_with_peak_kib(child: &mut Child) -> (std::process::ExitStatus, u64) {
    let mut peak = 0;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak);
        }
        peak = peak.max(peak_kib(child.id()));
        std::thread::sleep(Duration::from_millis(100));
    }
}
