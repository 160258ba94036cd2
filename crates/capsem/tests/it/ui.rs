//! The web UI (`capsem ui`): its door over real TCP, and the app in a real
//! Chromium (driven by playwright-core, `ui/tests/e2e.mjs`) against a real
//! service and real VMs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;

use crate::sandboxes::Service;
use crate::support::{assert_code, stderr, stdout};

/// A port nothing listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `capsem ui --no-open --port PORT`: its address and sign-in address.
fn open(service: &Service, port: u16) -> (String, String) {
    let out = service.ok(&["ui", "--no-open", "--port", &port.to_string()]);
    let mut lines = out.lines();
    let url = lines.next().expect("the address").to_owned();
    let login = lines
        .next()
        .and_then(|l| l.strip_prefix("sign in: "))
        .expect("the sign-in address")
        .to_owned();
    (url, login)
}

/// One HTTP/1.1 request over TCP; the status and the whole answer.
fn http(port: u16, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

fn get(port: u16, path: &str, headers: &str) -> (u16, String) {
    http(
        port,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Connection: close\r\n\r\n"
        ),
    )
}

/// The built UI project capsem embeds (`cargo xtask build-ui`): its
/// tests and node run from there.
fn ui_project() -> PathBuf {
    let dist = capsem_service::ui::BUNDLE_DIR;
    assert_ne!(
        capsem_service::ui::BUNDLE_FROM,
        "none",
        "capsem was built without its UI"
    );
    PathBuf::from(dist).parent().unwrap().to_owned()
}

#[test]
fn the_ui_listens_on_loopback_alone_and_answers_only_its_token() {
    let service = Service::new();
    let port = free_port();
    let (url, login) = open(&service, port);
    assert_eq!(url, format!("http://127.0.0.1:{port}/"));
    // Asked again: the same server, the same token.
    assert_eq!(open(&service, port), (url.clone(), login.clone()));
    // Not on 0.0.0.0: its one listening socket is 127.0.0.1's.
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let listening: Vec<&str> = tcp
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some("0A"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|local| local.ends_with(&format!(":{port:04X}")))
        .collect();
    assert_eq!(listening, [format!("0100007F:{port:04X}")]);

    let (status, answer) = get(port, "/v1/sandboxes", "");
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("run `capsem ui`"), "{answer}");
    let token = std::fs::read_to_string(service.capsem.home().join("run/ui.token")).unwrap();
    assert!(login.ends_with(&format!("?token={token}")));
    let (status, answer) = get(
        port,
        "/v1/sandboxes",
        &format!("Authorization: Bearer {token}\r\n"),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.ends_with("[]"), "{answer}");
    let (status, answer) = http(
        port,
        &format!(
            "GET /v1/sandboxes HTTP/1.1\r\nHost: attacker.test:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 403, "{answer}");

    // Another port is refused while this one serves.
    let out = service.run(&["ui", "--no-open", "--port", &free_port().to_string()]);
    assert_code(&out, 125);
    assert!(
        stderr(&out).contains(&format!("served on port {port} already")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn another_uid_can_neither_read_the_token_nor_use_the_api_without_it() {
    let service = Service::new();
    let port = free_port();
    open(&service, port);
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(args)
            .output()
            .unwrap()
    };
    let token = service.capsem.home().join("run/ui.token");
    let read = as_nobody(&["cat", token.to_str().unwrap()]);
    assert!(!read.status.success(), "nobody read the token");
    let url = format!("http://127.0.0.1:{port}/v1/sandboxes");
    let curl = as_nobody(&["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &url]);
    assert_eq!(stdout(&curl), "401");
}

#[test]
fn a_port_in_use_is_a_clear_refusal() {
    let service = Service::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = service.run(&["ui", "--no-open", "--port", &port]);
    assert_code(&out, 125);
    assert!(stderr(&out).contains("is in use"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--port"), "{}", stderr(&out));
}

#[test]
fn the_app_runs_sandboxes_and_terminals_in_chromium() {
    let service = Service::new();
    let (_, login) = open(&service, free_port());
    let project = ui_project();
    let screenshots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let out = Command::new(project.join("bin/node"))
        .arg(project.join("tests/e2e.mjs"))
        .env("CAPSEM_UI_LOGIN_URL", &login)
        .env("CAPSEM_UI_SCREENSHOTS", &screenshots)
        .env("CAPSEM_BIN", env!("CARGO_BIN_EXE_capsem"))
        .env("CAPSEM_HOME", service.capsem.home())
        .output()
        .unwrap();
    let home = service.capsem.home();
    let read = |path: &str| std::fs::read_to_string(home.join(path)).unwrap_or_default();
    assert!(
        out.status.success(),
        "the browser test failed:\n{}\n{}\nthe service's log:\n{}\nthe supervisor's log:\n{}",
        stdout(&out),
        stderr(&out),
        read("run/service.log"),
        read("sandboxes/ui-e2e/supervisor.log"),
    );
}
