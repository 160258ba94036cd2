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
pub fn free_port() -> u16 {
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
    // Asked again: the same server, a new one-time sign-in address.
    let (again, second_login) = open(&service, port);
    assert_eq!(again, url);
    assert_ne!(second_login, login);
    let path = login.strip_prefix(&url[..url.len() - 1]).unwrap();
    let (status, answer) = get(port, path, "");
    assert_eq!(status, 303, "{answer}");
    let (status, answer) = get(port, path, "");
    assert_eq!(status, 401, "a sign-in address works once: {answer}");
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
    assert!(
        !login.contains(&token),
        "the sign-in address holds no token"
    );
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

/// What a guest can make the UI show, as markup that must stay text.
const MARKUP: &str = "<img src=x onerror=alert(1)>";

#[test]
fn the_app_runs_sandboxes_terminals_network_and_settings_in_chromium() {
    let service = Service::new();
    let home = service.capsem.home();
    // The test's corporate file (CAPSEM_CORP_CONFIG) locks one setting.
    std::fs::write(home.join("no-corp.toml"), "[vm]\nmemory_mib = 1024\n").unwrap();
    assert_code(&service.run(&["run", "--", "echo", MARKUP]), 0);
    let xss_session = service.capsem.last_session_id();
    let tty_session = terminal_session(&service);
    let (_, login) = open(&service, free_port());
    let project = ui_project();
    let screenshots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let out = Command::new(project.join("bin/node"))
        .arg(project.join("tests/e2e.mjs"))
        .env("CAPSEM_UI_LOGIN_URL", &login)
        .env("CAPSEM_UI_SCREENSHOTS", &screenshots)
        .env("CAPSEM_UI_LOCKED_KEY", "vm.memory_mib")
        .env("CAPSEM_UI_XSS_SESSION", &xss_session)
        .env("CAPSEM_UI_TTY_SESSION", &tty_session)
        .output()
        .unwrap();
    let read = |path: &str| std::fs::read_to_string(home.join(path)).unwrap_or_default();
    assert!(
        out.status.success(),
        "the browser test failed:\n{}\n{}\nthe service's log:\n{}\nthe supervisor's log:\n{}",
        stdout(&out),
        stderr(&out),
        read("run/service.log"),
        read("sandboxes/ui-e2e/supervisor.log"),
    );
    // The Settings view wrote the user's file, through `capsem settings set`'s code.
    let user = read("user.toml");
    assert!(user.contains("cpus = 1"), "user.toml:\n{user}");
    assert_eq!(
        stdout(&service.run(&["settings", "get", "vm.cpus"])).trim(),
        "1"
    );
    // The locked one was not changed by any route.
    let token = read("run/ui.token");
    let port: u16 = login
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let body = r#"{"value":"2048"}"#;
    let (status, answer) = http(
        port,
        &format!(
            "PUT /v1/settings/vm.memory_mib HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 403, "{answer}");
    assert!(!read("user.toml").contains("memory_mib"));
}

/// A one-shot run on a terminal that printed `hello-42-replay`: a session
/// with a transcript; its id.
fn terminal_session(service: &Service) -> String {
    use expectrl::Expect;
    let cmd = service.capsem.cmd(&[
        "run",
        "-t",
        "--",
        "sh",
        "-c",
        "echo hello-$((6 * 7))-replay",
    ]);
    let mut run = expectrl::Session::spawn(cmd).expect("a terminal");
    run.set_expect_timeout(Some(std::time::Duration::from_secs(120)));
    run.expect("hello-42-replay").unwrap();
    run.expect(expectrl::Eof).unwrap();
    service.capsem.last_session_id()
}

/// A WebSocket to the UI's API, signed in with the token.
type Ws = tungstenite::WebSocket<TcpStream>;

fn websocket(port: u16, token: &str, path: &str) -> Ws {
    use tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://127.0.0.1:{port}{path}")
        .into_client_request()
        .unwrap();
    let bearer = format!("Bearer {token}").parse().unwrap();
    request.headers_mut().insert("authorization", bearer);
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    tungstenite::client(request, stream).unwrap().0
}

/// Text frames as JSON; output frames (their tag byte dropped) appended
/// to `seen`, until `until` holds.
fn read_until(
    ws: &mut Ws,
    seen: &mut String,
    until: impl Fn(&str, &serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        match ws.read().expect("the terminal's next message") {
            tungstenite::Message::Binary(data) => {
                seen.push_str(&String::from_utf8_lossy(&data[1..]));
                if until(seen, &serde_json::Value::Null) {
                    return serde_json::Value::Null;
                }
            }
            tungstenite::Message::Text(text) => {
                let message: serde_json::Value = serde_json::from_str(&text).unwrap();
                if until(seen, &message) {
                    return message;
                }
            }
            _ => {}
        }
    }
}

fn type_line(ws: &mut Ws, line: &str) {
    ws.send(tungstenite::Message::Binary(
        format!("{line}\n").into_bytes().into(),
    ))
    .unwrap();
}

#[test]
fn a_terminal_outlives_its_client_and_shows_its_output_to_the_next() {
    let service = Service::new();
    service.ok(&["create", "-n", "term"]);
    let port = free_port();
    open(&service, port);
    let token = std::fs::read_to_string(service.capsem.home().join("run/ui.token")).unwrap();
    let path = "/v1/sandboxes/term/terminal";
    let mut first = websocket(port, &token, path);
    let start = r#"{"command": {"Argv": ["bash", "-l"]}, "tty": {"rows": 24, "cols": 80}}"#;
    first
        .send(tungstenite::Message::Text(start.into()))
        .unwrap();
    let mut seen = String::new();
    let hello = read_until(&mut first, &mut seen, |_, m| m["type"] == "attached");
    let id = hello["id"].as_u64().unwrap();
    type_line(&mut first, "cd /tmp; kept=$((6*7)); echo one-$kept");
    read_until(&mut first, &mut seen, |s, _| s.contains("one-42"));
    // The client goes, as a reloading page does: the shell stays.
    drop(first);
    let mut second = websocket(port, &token, &format!("{path}?id={id}"));
    let mut replay = String::new();
    read_until(&mut second, &mut replay, |_, m| {
        m["type"] == "attached" && m["id"] == id
    });
    read_until(&mut second, &mut replay, |s, _| s.contains("one-42"));
    type_line(&mut second, "echo two-$kept-$(pwd)");
    read_until(&mut second, &mut replay, |s, _| s.contains("two-42-/tmp"));
    type_line(&mut second, "exit 7");
    let last = read_until(&mut second, &mut replay, |_, m| m["type"] == "exited");
    assert_eq!(last["code"], 7);
    // Ended, it is gone.
    let mut third = websocket(port, &token, &format!("{path}?id={id}"));
    let refusal = read_until(&mut third, &mut String::new(), |_, m| m["type"] == "error");
    assert!(
        refusal["message"].as_str().unwrap().contains("no terminal"),
        "{refusal}"
    );
}

#[test]
fn a_sandbox_keeps_a_bounded_number_of_terminals() {
    let service = Service::new();
    service.ok(&["create", "-n", "many"]);
    let port = free_port();
    open(&service, port);
    let token = std::fs::read_to_string(service.capsem.home().join("run/ui.token")).unwrap();
    let start = r#"{"command": {"Argv": ["cat"]}, "tty": {"rows": 24, "cols": 80}}"#;
    let open_one = || {
        let mut ws = websocket(port, &token, "/v1/sandboxes/many/terminal");
        ws.send(tungstenite::Message::Text(start.into())).unwrap();
        read_until(&mut ws, &mut String::new(), |_, m| !m.is_null())
    };
    // Detached at once, every one of them stays open.
    let ids: Vec<serde_json::Value> = (0..16).map(|_| open_one()).collect();
    assert!(ids.iter().all(|m| m["type"] == "attached"), "{ids:?}");
    let refusal = open_one();
    assert_eq!(refusal["type"], "error");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("16 terminals"),
        "{refusal}"
    );
    // Commands still run beside them.
    assert_eq!(
        service.ok(&["exec", "many", "echo", "beside"]).trim(),
        "beside"
    );
}

#[test]
fn a_terminal_whose_command_ignores_the_hang_up_is_cut_off() {
    let service = Service::new();
    service.ok(&["create", "-n", "stubborn"]);
    let port = free_port();
    open(&service, port);
    let token = std::fs::read_to_string(service.capsem.home().join("run/ui.token")).unwrap();
    let path = "/v1/sandboxes/stubborn/terminal";
    let mut ws = websocket(port, &token, path);
    let start = r#"{"command": {"Argv": ["sh", "-c", "trap '' HUP; echo trapped; while :; do sleep 1; done"]}, "tty": {"rows": 24, "cols": 80}}"#;
    ws.send(tungstenite::Message::Text(start.into())).unwrap();
    let mut seen = String::new();
    let hello = read_until(&mut ws, &mut seen, |_, m| m["type"] == "attached");
    read_until(&mut ws, &mut seen, |s, _| s.contains("trapped"));
    let hang_up = r#"{"type": "signal", "signal": 1}"#;
    ws.send(tungstenite::Message::Text(hang_up.into())).unwrap();
    let last = read_until(&mut ws, &mut seen, |_, m| m["type"] == "error");
    assert!(
        last["message"].as_str().unwrap().contains("cut off"),
        "{last}"
    );
    let again = format!("{path}?id={}", hello["id"]);
    let mut ws = websocket(port, &token, &again);
    let refusal = read_until(&mut ws, &mut String::new(), |_, m| m["type"] == "error");
    assert!(
        refusal["message"].as_str().unwrap().contains("no terminal"),
        "{refusal}"
    );
}
