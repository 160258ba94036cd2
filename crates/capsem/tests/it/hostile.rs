//! What a hostile guest (root in the VM) tries against the host through
//! the proxy and the session records: reaching host-side addresses,
//! reading back the real API keys, growing the host's disk and memory,
//! and driving the user's terminal through capsem's own output.

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use crate::network::{find, net_log};
use crate::support::{Capsem, RSS_LIMIT_KIB, assert_code, stdout, wait_with_peak_kib};
use crate::upstream::{Reply, Request, TestCa, Upstream};

/// Python: a DNS query for `name` (type A), as the guest's resolver is
/// sent it.
const DNS_QUERY: &str = r#"
import socket
def query(name):
    labels = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    return bytes.fromhex("beef01000001000000000000") + labels + b"\0\1\0\1"
"#;

/// Asks the host's resolver (through the agent) about each name given,
/// as a raw DNS query (the guest's own resolver library would read
/// `2130706433` as an address and never ask); prints `NAME rcode ADDRESS`.
/// For `localhost`, when it resolves, fetches `http://localhost/` through
/// the proxy and prints the status and body.
const ASK: &str = r#"
import subprocess, sys
def ask(name):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(10)
    s.sendto(query(name), ("127.0.0.1", 53))
    answer = s.recv(512)
    rcode = answer[3] & 15
    address = socket.inet_ntoa(answer[-4:]) if rcode == 0 and answer[7] else "-"
    return rcode, address
for name in sys.argv[1:]:
    rcode, address = ask(name)
    print(name, rcode, address, flush=True)
    if name == "localhost" and address != "-":
        out = subprocess.run(["curl", "-sS", "--max-time", "20", "-w", " status=%{http_code}",
            "--resolve", "localhost:80:" + address, "http://localhost/"], capture_output=True, text=True)
        print("fetched", out.stdout.strip(), flush=True)
"#;

/// Counts the connections a listener on the host's loopback port 80 gets
/// (where `localhost` leads upstream), when this process may bind it.
fn loopback_port_80() -> Option<Arc<AtomicUsize>> {
    let listener = TcpListener::bind("127.0.0.1:80").ok()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            let mut head = [0u8; 1024];
            let _ = conn.read(&mut head);
            let reply =
                "HTTP/1.1 200 OK\r\ncontent-length: 14\r\nconnection: close\r\n\r\nhost loopback\n";
            let _ = std::io::Write::write_all(&mut conn, reply.as_bytes());
        }
    });
    Some(accepted)
}

#[test]
fn host_side_addresses_are_refused_after_resolution_unless_allowed() {
    let capsem = Capsem::new();
    let server = loopback_port_80();
    capsem.user_settings("[network]\ndefault_action = \"allow\"\n");
    let names = [
        "localhost",
        "2130706433",
        "0x7f.1",
        "0177.0.0.1",
        "127.1",
        "169.254.169.254",
    ];
    let ask = format!("{DNS_QUERY}{ASK}");
    let mut args = vec!["run", "--", "python3", "-c", &ask];
    args.extend(names);
    let out = capsem.run(&args);
    assert_code(&out, 0);
    let text = stdout(&out);
    for name in &names[1..] {
        assert!(
            text.contains(&format!("{name} 3 -")),
            "{name} resolved: {text}"
        );
    }
    assert!(text.contains("status=403"), "{text}");
    assert!(text.contains("upstream.private_address"), "{text}");
    if let Some(accepted) = &server {
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            0,
            "the host's loopback was reached"
        );
    }
    let log = net_log(&capsem);
    let refused = find(&log, |r| r["domain"] == "localhost");
    assert_eq!(refused["decision"], "denied", "{refused}");
    let rule = refused["rule"].as_str().unwrap();
    assert!(rule.starts_with("upstream.private_address: "), "{rule}");
    assert!(rule.contains("loopback"), "{rule}");
    let spelled = find(&log, |r| r["name"] == "0x7f.1");
    assert!(
        spelled["rule"]
            .as_str()
            .unwrap()
            .starts_with("name.is_address"),
        "{spelled}"
    );

    // Naming the range lets it through, as it lets the tests' servers.
    capsem.user_settings(
        "[network]\ndefault_action = \"allow\"\n\
         allow_upstream_ranges = \"127.0.0.0/8, ::1\"\n",
    );
    let out = capsem.run(&["run", "--", "python3", "-c", &ask, "localhost"]);
    assert_code(&out, 0);
    let row = find(&net_log(&capsem), |r| r["domain"] == "localhost").clone();
    assert_ne!(row["decision"], "denied", "{row}");
    if let Some(accepted) = &server {
        assert!(stdout(&out).contains("host loopback"), "{}", stdout(&out));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}

const KEY: &str = "sk-ant-api03-the-real-key-that-must-stay-on-the-host";
const GOOGLE_KEY: &str = "AIza-the-real-google-key-that-must-stay-on-the-host";

/// A server that hands back what it was sent, every way a real one might:
/// the request in its body, the API key header in a response header, and
/// on `/redirect` a `Location` carrying it.
fn reflect(req: &Request) -> Reply {
    let key = req
        .raw_head
        .lines()
        .find_map(|l| {
            l.split_once(": ")
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-api-key"))
        })
        .map_or("", |(_, v)| v.trim())
        .to_owned();
    let mut headers = vec![("x-echo-key".to_owned(), key.clone())];
    let status = if req.line().starts_with("get /redirect") {
        let location = format!("https://api.anthropic.com/next?k={key}");
        headers.push(("location".to_owned(), location));
        302
    } else {
        200
    };
    Reply {
        status,
        content_type: "text/plain",
        headers,
        body: format!("you sent:\n{}", req.raw_head).into_bytes(),
    }
}

/// Every file of a session directory, as bytes.
fn session_bytes(capsem: &Capsem) -> Vec<u8> {
    capsem
        .sessions()
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).unwrap().flatten())
        .flat_map(|file| std::fs::read(file.path()).unwrap_or_default())
        .collect()
}

#[test]
fn the_real_keys_never_reach_the_guest_or_the_logs() {
    let capsem = Capsem::new();
    let ca = TestCa::new(capsem.home());
    let https = Upstream::https_with(
        &ca,
        &["api.anthropic.com", "storage.googleapis.com"],
        reflect,
    );
    let http = Upstream::http_with(reflect);
    capsem.user_settings(&format!(
        "[network]\nlog_bodies = true\n\
         resolve_override = \"api.anthropic.com=127.0.0.1:{0}, storage.googleapis.com=127.0.0.1:{0}, \
                              status.anthropic.com=127.0.0.1:{1}\"\n\
         extra_upstream_ca = \"{2}\"\n\
         [ai.anthropic]\napi_key = \"{KEY}\"\n[ai.google]\napi_key = \"{GOOGLE_KEY}\"\n",
        https.port,
        http.port,
        ca.pem.display()
    ));
    let script = r#"K=$ANTHROPIC_API_KEY; G=$GEMINI_API_KEY; c() { curl -sS -i --max-time 30 "$@"; echo; }
        c "https://api.anthropic.com/echo?q=$K" -H "x-api-key: $K" -H "X-Leak: $K" -H "Origin: $K" -H "Authorization: Bearer $K"
        c https://api.anthropic.com/redirect -H "x-api-key: $K"
        c http://status.anthropic.com/plain -H "x-api-key: $K"
        c "https://storage.googleapis.com/bucket/o?key=$G" -H "x-goog-api-key: $G"
        c --compressed https://api.anthropic.com/compressed -H "x-api-key: $K""#;
    let out = capsem.run(&["run", "--", "bash", "-c", script]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(
        !text.contains(KEY) && !text.contains(GOOGLE_KEY),
        "the guest saw a key:\n{text}"
    );
    assert!(
        text.contains("x-echo-key: sk-ant-capsem-placeholder"),
        "{text}"
    );
    assert!(
        text.contains("location: https://api.anthropic.com/next?k=sk-ant-capsem-placeholder"),
        "{text}"
    );

    let placeholder = "sk-ant-capsem-placeholder-the-host-holds-the-key";
    let seen = https.requests();
    let echo = seen.iter().find(|r| r.starts_with("get /echo")).unwrap();
    let real = KEY.to_ascii_lowercase();
    for line in [
        format!("x-api-key: {real}"),
        format!("authorization: bearer {real}"),
        format!("x-leak: {placeholder}"),
        format!("origin: {placeholder}"),
    ] {
        assert!(echo.contains(&format!("{line}\r\n")), "{line}: {echo}");
    }
    assert!(
        echo.starts_with(&format!("get /echo?q={placeholder} ")),
        "{echo}"
    );
    let storage = seen.iter().find(|r| r.starts_with("get /bucket")).unwrap();
    assert!(
        !storage.contains(&GOOGLE_KEY.to_ascii_lowercase()),
        "not an API host: {storage}"
    );
    let compressed = seen
        .iter()
        .find(|r| r.starts_with("get /compressed"))
        .unwrap();
    assert!(
        compressed.contains("accept-encoding: identity\r\n"),
        "{compressed}"
    );
    let plain = &http.requests()[0];
    assert!(
        plain.contains(&format!("x-api-key: {placeholder}\r\n")),
        "sent over HTTP: {plain}"
    );

    let stored = session_bytes(&capsem);
    for key in [KEY, GOOGLE_KEY] {
        let found = stored.windows(key.len()).any(|w| w == key.as_bytes());
        assert!(!found, "the session's files hold {key}");
    }
    let log = net_log(&capsem);
    let logged = find(&log, |r| {
        r["path"].as_str().is_some_and(|p| p.starts_with("/echo"))
    });
    assert!(
        logged["response_body"]
            .as_str()
            .unwrap()
            .contains("you sent:"),
        "{logged}"
    );
}

/// Requests with 4 KB paths to an allowed name that fails (a closed
/// port), 20 at a time, then (the Python program in `$1`) random names.
const FAILING: &str = r#"P=$(python3 -c "print('p' * 4000)")
curl -s -o /dev/null -Z --parallel-max 20 "http://closed.test/$P[1-2000]"
python3 -c "$1""#;

/// Python: random names asked as fast as the resolver answers.
const RANDOM_NAMES: &str = r#"
import random, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
end = time.time() + 5
while time.time() < end:
    for _ in range(20):
        s.sendto(query("%08x.names.test" % random.getrandbits(32)), ("127.0.0.1", 53))
    for _ in range(20):
        try:
            s.recv(512)
        except OSError:
            break
"#;

/// Allowed requests with 30 KB paths, whose answers (logged bodies) are
/// as long, for six seconds.
const LONG_PATHS: &str = r#"
import http.client, time
end = time.time() + 6
while time.time() < end:
    c = http.client.HTTPConnection('plain.test', timeout=5)
    c.request('GET', '/' + 'p' * 30000)
    c.getresponse().read()
"#;

#[test]
fn failed_requests_and_lookups_are_logged_within_quotas() {
    let capsem = Capsem::new();
    capsem.user_settings(
        "[network]\nallow = \"closed.test, *.names.test\"\n\
         resolve_override = \"closed.test=127.0.0.1:1\"\n",
    );
    let names = format!("{DNS_QUERY}{RANDOM_NAMES}");
    let out = capsem.run(&["run", "--", "bash", "-c", FAILING, "bash", &names]);
    assert_code(&out, 0);
    let log = net_log(&capsem);
    for note in [
        "more failed requests not logged",
        "more DNS queries not logged",
    ] {
        find(&log, |r| {
            r["rule"].as_str().is_some_and(|s| s.contains(note))
        });
    }
    let failed: Vec<&Value> = log
        .iter()
        .filter(|r| r["domain"] == "closed.test")
        .collect();
    assert!(!failed.is_empty());
    for row in &failed {
        let path = row["path"].as_str().unwrap();
        assert!(path.len() < 2100 && path.ends_with("bytes cut)"), "{path}");
    }
}

#[test]
fn a_guest_cannot_grow_its_session_past_the_budget() {
    let capsem = Capsem::new();
    let http = Upstream::http();
    capsem.user_settings(&format!(
        "[sessions]\nmax_session_mib = 1\n\
         [network]\nallow = \"plain.test\"\nresolve_override = \"plain.test=127.0.0.1:{}\"\n\
         log_bodies = true\n",
        http.port
    ));
    let out = capsem.run(&["run", "--", "python3", "-c", LONG_PATHS]);
    assert_code(&out, 0);
    let dir = &capsem.sessions()[0];
    let size = std::fs::metadata(dir.join("session.db")).unwrap().len();
    assert!(
        size <= 1024 * 1024 + 64 * 1024,
        "session.db grew to {size} bytes"
    );
    let show = capsem.run(&["sessions", "show", "--json", &capsem.last_session_id()]);
    let show: Value = serde_json::from_str(&stdout(&show)).unwrap();
    let over = show["data"]["session"]["over_budget_events"]
        .as_u64()
        .unwrap();
    assert!(over > 0, "{show}");
    let text = stdout(&capsem.run(&["sessions", "show", &capsem.last_session_id()]));
    assert!(text.contains("sessions.max_session_mib reached"), "{text}");
}

#[test]
fn a_terminal_transcript_is_capped_and_replayed_from_disk() {
    let capsem = Capsem::new();
    capsem.user_settings("[sessions]\nmax_session_mib = 1\n");
    let script = "head -c 3000000 /dev/zero | tr '\\0' x; echo; echo end";
    let out = capsem.run(&["run", "-t", "--", "sh", "-c", script]);
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains("end"),
        "the guest's output was cut, not only its record"
    );
    let id = capsem.last_session_id();
    let transcript = capsem.sessions()[0].join("transcript");
    let size = std::fs::metadata(&transcript).unwrap().len();
    assert!(size <= 1024 * 1024, "the transcript grew to {size} bytes");
    let replay = capsem.run(&["sessions", "replay", &id]);
    assert_code(&replay, 0);
    assert!(
        crate::support::stderr(&replay).contains("the transcript stops here"),
        "{}",
        crate::support::stderr(&replay)
    );
    let show: Value =
        serde_json::from_str(&stdout(&capsem.run(&["sessions", "show", "--json", &id]))).unwrap();
    assert!(
        show["data"]["session"]["transcript_cut_bytes"]
            .as_u64()
            .unwrap()
            > 1_000_000
    );

    // A transcript far larger than capsem's memory limit, 128 MiB over one
    // second of recorded time: replayed at its pace, from disk.
    let mut big = std::io::BufWriter::new(std::fs::File::create(&transcript).unwrap());
    use std::io::Write;
    big.write_all(b"CAPSEM-TTY-REC1\n").unwrap();
    let chunk = vec![b'y'; 64 * 1024];
    for i in 0..2048u64 {
        big.write_all(b"o").unwrap();
        big.write_all(&(i * 500).to_le_bytes()).unwrap();
        big.write_all(&(chunk.len() as u32).to_le_bytes()).unwrap();
        big.write_all(&chunk).unwrap();
    }
    drop(big);
    let mut child = capsem
        .cmd(&["sessions", "replay", "--timing", &id])
        .stdout(std::fs::File::create("/dev/null").unwrap())
        .spawn()
        .unwrap();
    let (status, peak) = wait_with_peak_kib(&mut child);
    assert!(status.success());
    assert!(peak < RSS_LIMIT_KIB, "replay took {peak} KiB");
}

#[test]
fn a_flood_of_unanswered_http2_streams_keeps_capsem_small() {
    // 75 HTTP/2 connections of 200 streams each, with 12 KB of headers,
    // to a server that never answers: every stream the proxy takes holds
    // host memory until its server answers, so it must not take them all.
    let capsem = Capsem::new();
    let ca = TestCa::new(capsem.home());
    let hang = Upstream::https_with(&ca, &["hang.test"], |_| {
        std::thread::sleep(std::time::Duration::from_secs(120));
        (500, "text/plain", Vec::new())
    });
    capsem.user_settings(&format!(
        "[network]\nallow = \"hang.test\"\nresolve_override = \"hang.test=127.0.0.1:{}\"\n\
         extra_upstream_ca = \"{}\"\n",
        hang.port,
        ca.pem.display()
    ));
    let script = r#"
const http2 = require('http2');
let ready = 0;
for (let c = 0; c < 75; c++) {
  const session = http2.connect('https://hang.test');
  session.on('error', () => {});
  for (let i = 0; i < 200; i++) {
    const req = session.request({ ':path': '/' + i, 'x-pad': 'a'.repeat(12000) });
    req.on('error', () => {});
    req.on('ready', () => { ready++; });
    req.end();
  }
}
setTimeout(() => { console.log('streams sent: ' + ready); process.exit(0); }, 45000);
"#;
    let mut child = capsem
        .cmd(&["run", "--", "node", "-e", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (status, peak) = wait_with_peak_kib(&mut child);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{out}");
    assert!(out.contains("streams sent: "), "{out}");
    assert!(peak < RSS_LIMIT_KIB, "capsem grew to {peak} KiB: {out}");
}

#[test]
fn guest_text_cannot_drive_the_users_terminal() {
    let capsem = Capsem::new();
    let ca = TestCa::new(capsem.home());
    let https = Upstream::https(&ca, &["allowed.test"]);
    capsem.user_settings(&format!(
        "[network]\nallow = \"allowed.test\"\nresolve_override = \"allowed.test=127.0.0.1:{}\"\n\
         extra_upstream_ca = \"{}\"\n",
        https.port,
        ca.pem.display()
    ));
    let script = r#"exec -a "$(printf '\033[2J\033]0;title\007')" curl -sS --max-time 30 https://allowed.test/"#;
    let out = capsem.run(&["run", "--", "bash", "-c", script]);
    assert_code(&out, 0);
    let text = stdout(&capsem.run(&["net", "log"]));
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    assert!(text.contains("\\x1b[2J\\x1b]0;title\\x07"), "{text}");
    let raw = capsem.json_lines(&["net", "log", "--json"]);
    let row = raw
        .iter()
        .find(|r| r["data"]["domain"] == "allowed.test")
        .unwrap();
    let process = row["data"]["process"].as_str().unwrap();
    assert!(
        process.starts_with("\x1b[2J"),
        "JSON keeps the raw value: {process:?}"
    );
}
