//! The guest's network: every connection goes through capsem's policy
//! proxy, and every decision lands in the session. The "internet" is local
//! servers reached through `network.resolve_override`.

use std::io::Write;

use serde_json::Value;

use crate::support::{Capsem, RSS_LIMIT_KIB, assert_code, read_line, stdout, wait_with_peak_kib};
use crate::upstream::{Handler, Request, TestCa, Upstream};

/// A capsem that allows `allowed.test` (HTTPS) and `plain.test` (HTTP),
/// both served locally; `network` adds settings under `[network]`.
fn world_with(network: &str) -> (Capsem, Upstream, Upstream) {
    let capsem = Capsem::new();
    let ca = TestCa::new(capsem.home());
    let https = Upstream::https(&ca, &["allowed.test"]);
    let http = Upstream::http();
    capsem.user_settings(&format!(
        "[network]\n\
         allow = \"allowed.test, plain.test\"\n\
         resolve_override = \"allowed.test=127.0.0.1:{}, plain.test=127.0.0.1:{}\"\n\
         extra_upstream_ca = \"{}\"\n{network}",
        https.port,
        http.port,
        ca.pem.display()
    ));
    (capsem, https, http)
}

fn world() -> (Capsem, Upstream, Upstream) {
    world_with("")
}

/// The last session's network log.
pub fn net_log(capsem: &Capsem) -> Vec<Value> {
    net_log_of(capsem, "")
}

/// A session's network log (the last one's for "").
pub fn net_log_of(capsem: &Capsem, id: &str) -> Vec<Value> {
    let mut args = vec!["net", "log", "--json"];
    args.extend((!id.is_empty()).then_some(id));
    let records = capsem.json_lines(&args);
    records.into_iter().map(|r| r["data"].clone()).collect()
}

pub fn find(log: &[Value], pred: impl Fn(&Value) -> bool) -> &Value {
    log.iter()
        .find(|row| pred(row))
        .unwrap_or_else(|| panic!("no such row in {log:#?}"))
}

#[test]
fn allowed_requests_reach_their_servers_and_are_logged() {
    let (capsem, https, http) = world_with("log_bodies = true\nmax_body_bytes = 2\n");
    let out = capsem.run(&[
        "run",
        "--",
        "sh",
        "-c",
        "curl -sS --max-time 30 'https://allowed.test/hello?x=1' && \
         curl -sS --max-time 30 -d 'abc' http://plain.test/world",
    ]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("hello from upstream: get /hello?x=1 http/1.1"),
        "{text}"
    );
    assert!(
        text.contains("hello from upstream: post /world http/1.1"),
        "{text}"
    );
    assert!(https.requests()[0].contains("host: allowed.test\r\n"));
    assert!(http.requests()[0].contains("host: plain.test\r\n"));

    let log = net_log(&capsem);
    let tls = find(&log, |r| r["domain"] == "allowed.test");
    assert_eq!(tls["decision"], "allowed");
    assert_eq!(tls["protocol"], "https");
    assert_eq!(tls["status"], 200);
    assert_eq!(tls["method"], "GET");
    assert_eq!(tls["path"], "/hello?x=1");
    assert_eq!(tls["rule"], "network.allow: allowed.test");
    assert!(
        tls["process"].as_str().unwrap().starts_with("curl "),
        "{tls}"
    );
    assert!(tls["bytes_down"].as_u64().unwrap() > 0);
    let plain = find(&log, |r| r["domain"] == "plain.test");
    assert_eq!(plain["protocol"], "http");
    assert_eq!(plain["bytes_up"], 3);
    assert_eq!(
        plain["request_body"], "ab",
        "bodies are cut at max_body_bytes"
    );
    assert_eq!(plain["response_body"], "he");

    let show = capsem.run(&["sessions", "show", &capsem.last_session_id()]);
    assert!(
        stdout(&show).contains("network   2 allowed, 0 denied"),
        "{}",
        stdout(&show)
    );
}

#[test]
fn a_cold_booted_vm_reaches_allowed_servers_too() {
    let (capsem, https, _http) = world_with(&format!("\n{}", crate::snapshot::COLD));
    let out = capsem.run(&["-q", "curl -sS --max-time 30 https://allowed.test/cold"]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("get /cold"), "{}", stdout(&out));
    assert_eq!(https.requests().len(), 1);
    let log = net_log(&capsem);
    assert_eq!(find(&log, |r| r["domain"] == "allowed.test")["status"], 200);
}

#[test]
fn refused_traffic_fails_in_the_guest_and_is_logged() {
    let (capsem, https, _http) = world();
    let script = "\
        curl -sS --max-time 20 https://denied.test/; echo \"denied=$?\"; \
        curl -sS --max-time 20 http://1.2.3.4/; echo \"raw_ip=$?\"; \
        ip=$(getent hosts allowed.test | cut -d' ' -f1); echo \"synthetic=$ip\"; \
        curl -sS --max-time 20 --resolve evil.test:443:$ip https://evil.test/; echo \"sni=$?\"; \
        curl -sSf --max-time 20 -H 'Host: evil.test' https://allowed.test/; echo \"fronted=$?\"; \
        curl -sS --max-time 20 https://allowed.test:8443/; echo \"port=$?\"; \
        python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b\"x\", (\"8.8.8.8\", 443))'; \
        echo \"udp=$?\"; sleep 1";
    let out = capsem.run(&["run", "--", "sh", "-c", script]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("denied=6"), "{text}");
    assert!(text.contains("synthetic=100.64."), "{text}");
    for refused in ["raw_ip=0", "sni=0", "fronted=0", "port=0", "udp=0"] {
        assert!(!text.contains(refused), "{refused}: {text}");
    }
    assert!(
        https.requests().iter().all(|r| !r.contains("evil.test")),
        "a fronted request reached the server"
    );

    let log = net_log(&capsem);
    let denied = |pred: &dyn Fn(&Value) -> bool| {
        let row = find(&log, |r| pred(r));
        assert_eq!(row["decision"], "denied", "{row}");
        row["rule"].as_str().unwrap().to_owned()
    };
    assert!(denied(&|r| r["ip"] == "1.2.3.4").contains("raw IP"));
    assert!(denied(&|r| r["port"] == 8443).contains("only ports 80"));
    assert!(
        denied(&|r| r["rule"]
            .as_str()
            .is_some_and(|s| s.contains("TLS server name evil.test")))
        .contains("allowed.test")
    );
    assert!(
        denied(&|r| r["method"] == "GET" && r["domain"] == "allowed.test")
            .contains("domain fronting")
    );
    assert!(denied(&|r| r["protocol"] == "udp").contains("firewall"));
    // The firewall's refusals are the guest's own reports; the rest the
    // host saw.
    assert_eq!(
        find(&log, |r| r["protocol"] == "udp")["reported_by"],
        "guest"
    );
    assert_eq!(find(&log, |r| r["ip"] == "1.2.3.4")["reported_by"], "host");
    let text = stdout(&capsem.run(&["net", "log"]));
    let udp = text.lines().find(|l| l.contains(" udp ")).unwrap();
    assert!(udp.ends_with("(guest)"), "{udp}");
    let query = find(&log, |r| r["name"] == "denied.test");
    assert_eq!(
        (query["allowed"].as_bool(), query["rule"].as_str()),
        (Some(false), Some("network.default_action"))
    );
    let show = capsem.run(&["sessions", "show", "--json", &capsem.last_session_id()]);
    let show: Value = serde_json::from_str(&stdout(&show)).unwrap();
    let network = &show["data"]["events"]["network"];
    assert!(network["dns_denied"].as_u64().unwrap() >= 1, "{network}");
}

const REAL_KEY: &str = "sk-ant-api03-the-real-key-only-the-host-knows";

/// A stand-in for Anthropic's Messages API; streams (SSE) when asked to.
fn fake_anthropic(req: &Request) -> (u16, &'static str, Vec<u8>) {
    let line = req.line();
    if !line.starts_with("post /v1/messages") || line.contains("count_tokens") {
        let error = r#"{"type":"error","error":{"type":"not_found_error","message":"no"}}"#;
        return (404, "application/json", error.into());
    }
    let request: Value = serde_json::from_slice(&req.body).unwrap_or_default();
    let model = request["model"].as_str().unwrap_or("claude-sonnet-4-5");
    let text = "Hello from the fake API";
    let message = serde_json::json!({
        "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 25, "output_tokens": 1}
    });
    if request["stream"] != true {
        let mut whole = message;
        whole["content"] = serde_json::json!([{"type": "text", "text": text}]);
        whole["stop_reason"] = "end_turn".into();
        whole["usage"]["output_tokens"] = 7.into();
        return (200, "application/json", whole.to_string().into_bytes());
    }
    let events = [
        (
            "message_start",
            serde_json::json!({"type": "message_start", "message": message}),
        ),
        (
            "content_block_start",
            serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        ),
        (
            "content_block_stop",
            serde_json::json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta",
            serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 7}}),
        ),
        ("message_stop", serde_json::json!({"type": "message_stop"})),
    ];
    let stream: String = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    (200, "text/event-stream", stream.into_bytes())
}

/// A capsem holding `key` in settings `[section]`, with each of `names`
/// served over HTTPS by `handler`; `allow` goes to `network.allow`.
fn provider_world(
    section: &str,
    key: &str,
    names: &[&str],
    allow: &str,
    handler: Handler<(u16, &'static str, Vec<u8>)>,
) -> (Capsem, Upstream) {
    let capsem = Capsem::new();
    let ca = TestCa::new(capsem.home());
    let api = Upstream::https_with(&ca, names, handler);
    let routes: Vec<String> = names
        .iter()
        .map(|name| format!("{name}=127.0.0.1:{}", api.port))
        .collect();
    capsem.user_settings(&format!(
        "[network]\nallow = \"{allow}\"\nresolve_override = \"{}\"\n\
         extra_upstream_ca = \"{}\"\n[{section}]\napi_key = \"{key}\"\n",
        routes.join(", "),
        ca.pem.display(),
    ));
    (capsem, api)
}

/// A capsem holding an Anthropic key, with api.anthropic.com (and the
/// allowed, non-provider allowed.test) served by [`fake_anthropic`].
fn anthropic_world() -> (Capsem, Upstream) {
    let names = ["api.anthropic.com", "allowed.test"];
    provider_world(
        "ai.anthropic",
        REAL_KEY,
        &names,
        "allowed.test",
        fake_anthropic,
    )
}

/// Runs an AI CLI (`args`) against its provider's fake API and checks what
/// every such run must show: the fake's answer, `key_header` then `key` on each
/// request whose line contains `call`, and the key nowhere in the log,
/// which is returned.
fn cli_run(
    capsem: &Capsem,
    api: &Upstream,
    args: &[&str],
    call: &str,
    key_header: &str,
    key: &str,
) -> Vec<Value> {
    let out = capsem.run(args);
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains("Hello from the fake API"),
        "{}",
        stdout(&out)
    );
    let requests = api.requests();
    let calls: Vec<&String> = requests.iter().filter(|r| r.contains(call)).collect();
    assert!(!calls.is_empty(), "{requests:?}");
    let sent = format!("{key_header}{}", key.to_ascii_lowercase());
    for request in calls {
        assert!(request.contains(&sent), "{request}");
    }
    let log = net_log(capsem);
    assert!(!log.iter().any(|r| r.to_string().contains(key)));
    log
}

/// Asserts the token counts every fake API reports.
#[track_caller]
fn assert_fake_tokens(call: &Value) {
    let tokens = (
        call["input_tokens"].as_u64(),
        call["output_tokens"].as_u64(),
    );
    assert_eq!(tokens, (Some(25), Some(7)), "{call}");
}

#[test]
fn the_api_key_is_put_in_on_the_host_and_only_for_its_provider() {
    let (capsem, api) = anthropic_world();
    let script = "echo \"guest sees $ANTHROPIC_API_KEY\"; \
        curl -sS --max-time 30 https://api.anthropic.com/v1/messages -H \"x-api-key: $ANTHROPIC_API_KEY\" \
            -H 'content-type: application/json' -d '{\"model\":\"claude-haiku-4-5\",\"max_tokens\":5}'; echo; \
        curl -sS --max-time 30 https://allowed.test/v1/other -H \"x-api-key: $ANTHROPIC_API_KEY\"";
    let out = capsem.run(&["run", "--", "sh", "-c", script]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(!text.contains(REAL_KEY), "the guest saw the key: {text}");
    assert!(
        text.contains("guest sees sk-ant-capsem-placeholder"),
        "{text}"
    );
    assert!(text.contains("Hello from the fake API"), "{text}");
    let requests = api.requests();
    assert!(
        requests[0].contains(&format!("x-api-key: {REAL_KEY}")),
        "{}",
        requests[0]
    );
    assert!(
        requests[1].contains("x-api-key: sk-ant-capsem-placeholder"),
        "a key went to a domain not the provider's: {}",
        requests[1]
    );

    let log = net_log(&capsem);
    let call = find(&log, |r| r["path"] == "/v1/messages");
    let fingerprint = call["key_fingerprint"].as_str().unwrap();
    assert!(
        call.get("request_body").is_none(),
        "bodies are not kept by default"
    );
    assert_eq!(fingerprint.len(), 16);
    assert!(!log.iter().any(|r| r.to_string().contains(REAL_KEY)));
    assert!(find(&log, |r| r["domain"] == "allowed.test")["key_fingerprint"].is_null());
    let model = find(&log, |r| r["provider"] == "anthropic");
    assert_eq!(model["model"], "claude-haiku-4-5");
    assert_fake_tokens(model);
    assert_eq!(model["stop_reason"], "end_turn");
    assert_eq!(model["key_fingerprint"], fingerprint);
}

#[test]
fn claude_code_talks_to_its_api_through_the_proxy() {
    let (capsem, api) = anthropic_world();
    let args = ["run", "--timeout", "300", "--", "claude", "-p", "hello"];
    let log = cli_run(
        &capsem,
        &api,
        &args,
        "post /v1/messages",
        "x-api-key: ",
        REAL_KEY,
    );
    let call = find(&log, |r| {
        r["provider"] == "anthropic" && r["stop_reason"] == "end_turn"
    });
    assert_fake_tokens(call);
    assert!(
        call["model"].as_str().unwrap().starts_with("claude-"),
        "{call}"
    );
    assert!(call["cost_usd"].as_f64().is_some(), "{call}");
}

#[test]
fn uploads_stream_with_bounded_memory_even_to_a_server_that_stalls() {
    let capsem = Capsem::new();
    let http = Upstream::http();
    // A server that accepts and then neither reads nor answers.
    let stall = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stall_port = stall.local_addr().unwrap().port();
    let held = std::thread::spawn(move || stall.incoming().take(1).flatten().collect::<Vec<_>>());
    capsem.user_settings(&format!(
        "[network]\nallow = \"plain.test, stall.test\"\n\
         resolve_override = \"plain.test=127.0.0.1:{}, stall.test=127.0.0.1:{stall_port}\"\n",
        http.port
    ));
    let script = "head -c 64M /dev/zero > /tmp/big; \
        curl -sS --max-time 120 --data-binary @/tmp/big -o /dev/null -w 'code=%{http_code}\\n' http://plain.test/upload; \
        curl -sS --max-time 15 --data-binary @/tmp/big -o /dev/null http://stall.test/; echo stalled=$?";
    let mut child = capsem
        .cmd(&["run", "--", "sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (_, peak) = wait_with_peak_kib(&mut child);
    let out = child.wait_with_output().unwrap();
    let text = stdout(&out);
    assert!(text.contains("code=200"), "{text}");
    assert!(text.contains("stalled=28"), "{text}");
    assert!(
        peak < RSS_LIMIT_KIB,
        "capsem grew to {peak} KiB during 64 MiB uploads"
    );
    let log = net_log(&capsem);
    let upload = find(&log, |r| r["domain"] == "plain.test");
    assert_eq!(upload["bytes_up"], 64 * 1024 * 1024);
    // The stalled request was still waiting when curl gave up and the VM
    // stopped: it is in the log all the same, as cut short.
    let stalled = find(&log, |r| r["domain"] == "stall.test");
    assert_eq!(stalled["decision"], "error", "{stalled}");
    assert!(
        stalled["error"].as_str().unwrap().starts_with("cut short"),
        "{stalled}"
    );
    drop(held);
}

#[test]
fn a_guest_holding_every_stream_cannot_hold_back_ctrl_c() {
    // 150 idle connections to an allowed name, each holding a channel
    // stream while the proxy waits for its TLS hello: more than the
    // channel's 128 streams. Past the guest's budget they wait; the
    // channel, and the host's control stream, stay up.
    let capsem = Capsem::new();
    let script = r#"python3 -c '
import socket, time
held = []
for _ in range(150):
    try:
        held.append(socket.create_connection(("api.anthropic.com", 443), timeout=5))
    except OSError:
        pass
print("held", len(held), flush=True)
time.sleep(600)
'"#;
    let mut child = capsem
        .cmd(&["-q", script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = crate::support::read_line(&mut child);
    assert!(line.starts_with("held "), "{line}");
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "SIGINT did not reach the guest command"
    );
}

#[test]
fn a_flood_of_refusals_is_logged_within_a_quota() {
    let capsem = Capsem::new();
    let script = r#"python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(20000):
    try:
        s.sendto(b"x", ("8.8.8.8", 1000 + i % 1000))
    except OSError:
        pass
'; sleep 1"#;
    let out = capsem.run(&["-q", script]);
    assert_code(&out, 0);
    let log = net_log(&capsem);
    // At most 100 rows a second are logged (the quota's seconds and the
    // log's clock are not aligned, so a clock second may see two halves).
    let mut per_second = std::collections::HashMap::new();
    for row in log.iter().filter(|r| r["protocol"] == "udp") {
        *per_second
            .entry((row["at_ms"].as_f64().unwrap() / 1000.0) as u64)
            .or_insert(0) += 1;
    }
    let busiest = per_second.values().max().copied().unwrap_or(0);
    assert!(busiest <= 200, "{busiest} rows logged in one second");
    let summary = find(&log, |r| {
        r["rule"]
            .as_str()
            .is_some_and(|s| s.contains("more refusals not logged"))
    });
    assert!(
        summary["rule"]
            .as_str()
            .unwrap()
            .starts_with(char::is_numeric)
    );
}

#[test]
fn websockets_work_and_are_logged_with_their_traffic() {
    let capsem = Capsem::new();
    let ca = TestCa::new(capsem.home());
    let server = Upstream::websocket(&ca, &["ws.test"]);
    let settings = format!(
        "[network]\nallow = \"ws.test\"\n\
         resolve_override = \"ws.test=127.0.0.1:{}\"\nextra_upstream_ca = \"{}\"\n",
        server.port,
        ca.pem.display()
    );
    capsem.user_settings(&settings);
    // Node's own WebSocket client, trusting capsem's CA like any program.
    // Room 1 is closed by the guest; room 2 is still open when the command
    // exits; room 3 is closed by the host when the policy drops its name;
    // room 4 is open when the VM is killed.
    let script = r#"
function chat(room, then) {
  const ws = new WebSocket('wss://ws.test/chat?room=' + room);
  ws.onopen = () => ws.send('hello from room ' + room);
  ws.onmessage = (e) => { console.log(e.data); then(ws); };
  ws.onerror = (e) => { console.log('error: ' + e.message); process.exit(3); };
  return ws;
}
const room = process.argv[1];
if (room == '1') {
  chat(1, (ws) => { ws.onclose = () => chat(2, () => process.exit(0)); ws.close(); });
} else {
  chat(room, (ws) => { ws.onclose = () => { console.log('closed'); process.exit(0); }; });
}
"#;
    let out = capsem.run(&["run", "--", "node", "-e", script, "1"]);
    assert_code(&out, 0);
    assert_eq!(
        stdout(&out),
        "echo: hello from room 1\necho: hello from room 2\n"
    );
    let open = |room: &str| {
        let mut child = capsem
            .cmd(&["run", "--", "node", "-e", script, room])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        assert_eq!(
            read_line(&mut child),
            format!("echo: hello from room {room}\n")
        );
        child
    };
    let room3 = open("3");
    capsem.user_settings(&format!(
        "[network]\nresolve_override = \"ws.test=127.0.0.1:{}\"\n",
        server.port
    ));
    let out = room3.wait_with_output().unwrap();
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "closed\n");
    capsem.user_settings(&settings);
    let mut room4 = open("4");
    let qemu = crate::support::children_of(room4.id())[0];
    std::process::Command::new("kill")
        .args(["-KILL", &qemu.to_string()])
        .status()
        .unwrap();
    assert_eq!(room4.wait().unwrap().code(), Some(125));
    let head = &server.requests()[0];
    assert!(head.starts_with("get /chat?room=1\r\n"), "{head}");
    assert!(head.contains("host: ws.test\r\n"), "{head}");

    let sessions = capsem.json_lines(&["sessions", "--json"]);
    let log: Vec<Value> = sessions
        .iter()
        .flat_map(|s| net_log_of(&capsem, s["data"]["id"].as_str().unwrap()))
        .collect();
    for room in ["1", "2", "3", "4"] {
        let path = format!("/chat?room={room}");
        let row = find(&log, |r| r["path"] == path.as_str());
        assert_eq!(row["domain"], "ws.test");
        assert_eq!(row["protocol"], "wss", "{row}");
        assert_eq!(row["status"], 101);
        assert_eq!(row["decision"], "allowed");
        // The masked message frame up (2 + 4 + 17 bytes), the echo down.
        assert!(row["bytes_up"].as_u64().unwrap() >= 23, "{row}");
        assert!(row["bytes_down"].as_u64().unwrap() >= 25, "{row}");
        // Rooms 3 and 4 were ended by the host, and say why.
        let error = row["error"].as_str().unwrap_or_default();
        match room {
            "3" => assert!(error.contains("no longer allows"), "{row}"),
            "4" => assert!(!error.is_empty(), "{row}"),
            _ => assert!(row["error"].is_null(), "{row}"),
        }
    }
}

const REAL_OPENAI_KEY: &str = "sk-proj-the-real-openai-key-only-the-host-knows";

/// A stand-in for OpenAI's Responses API, streaming (SSE) as Codex asks.
fn fake_openai(req: &Request) -> (u16, &'static str, Vec<u8>) {
    if !req.line().starts_with("post /v1/responses") {
        let error = r#"{"error":{"message":"not here","type":"invalid_request_error"}}"#;
        return (404, "application/json", error.into());
    }
    let request: Value = serde_json::from_slice(&req.body).unwrap_or_default();
    let model = request["model"].as_str().unwrap_or("gpt-5");
    let text = "Hello from the fake API";
    let message = |status: &str, content: Value| {
        serde_json::json!({"type": "message", "id": "msg_fake", "role": "assistant",
            "status": status, "content": content})
    };
    let done = serde_json::json!([{"type": "output_text", "text": text, "annotations": []}]);
    let events = [
        serde_json::json!({"type": "response.created", "response": {"id": "resp_fake",
            "object": "response", "status": "in_progress", "model": model, "output": []}}),
        serde_json::json!({"type": "response.output_item.added", "output_index": 0,
            "item": message("in_progress", serde_json::json!([]))}),
        serde_json::json!({"type": "response.output_text.delta", "item_id": "msg_fake",
            "output_index": 0, "content_index": 0, "delta": text}),
        serde_json::json!({"type": "response.output_item.done", "output_index": 0,
            "item": message("completed", done.clone())}),
        serde_json::json!({"type": "response.completed", "response": {"id": "resp_fake",
            "object": "response", "status": "completed", "model": model,
            "output": [message("completed", done)],
            "usage": {"input_tokens": 25, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 32}}}),
    ];
    let stream: String = events
        .iter()
        .map(|data| {
            format!(
                "event: {}\ndata: {data}\n\n",
                data["type"].as_str().unwrap()
            )
        })
        .collect();
    (200, "text/event-stream", stream.into_bytes())
}

#[test]
fn codex_talks_to_its_api_through_the_proxy() {
    let names = ["api.openai.com"];
    let (capsem, api) = provider_world("ai.openai", REAL_OPENAI_KEY, &names, "", fake_openai);
    let args = [
        "run",
        "--timeout",
        "300",
        "--",
        "codex",
        "exec",
        "--skip-git-repo-check",
        "say hello",
    ];
    let auth = "authorization: bearer ";
    let log = cli_run(
        &capsem,
        &api,
        &args,
        "post /v1/responses",
        auth,
        REAL_OPENAI_KEY,
    );
    let call = find(&log, |r| r["provider"] == "openai");
    assert_fake_tokens(call);
    assert_eq!(call["stop_reason"], "completed", "{call}");
}

const REAL_GOOGLE_KEY: &str = "AIza-the-real-google-key-only-the-host-knows";

/// A stand-in for the Gemini API: `generateContent`, streamed (SSE) or
/// not, and `countTokens`.
fn fake_gemini(req: &Request) -> (u16, &'static str, Vec<u8>) {
    let line = req.line();
    let model = line
        .split("/models/")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap_or("gemini-2.5-pro");
    if line.starts_with("post ") && line.contains(":counttokens") {
        return (200, "application/json", br#"{"totalTokens": 25}"#.to_vec());
    }
    if !line.starts_with("post ") || !line.contains("generatecontent") {
        let error = r#"{"error":{"code":404,"message":"not here","status":"NOT_FOUND"}}"#;
        return (404, "application/json", error.into());
    }
    // Unstreamed calls are Gemini CLI's model router, which wants JSON.
    let text = if line.contains("alt=sse") {
        "Hello from the fake API"
    } else {
        r#"{"reasoning": "a greeting", "model_choice": "flash"}"#
    };
    let answer = serde_json::json!({
        "candidates": [{"content": {"parts": [{"text": text}], "role": "model"},
            "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 25, "candidatesTokenCount": 7, "totalTokenCount": 32},
        "modelVersion": model,
    });
    if line.contains("alt=sse") {
        let stream = format!("data: {answer}\r\n\r\n");
        return (200, "text/event-stream", stream.into_bytes());
    }
    (200, "application/json", answer.to_string().into_bytes())
}

#[test]
fn gemini_cli_talks_to_its_api_through_the_proxy() {
    let names = ["generativelanguage.googleapis.com"];
    let (capsem, api) = provider_world("ai.google", REAL_GOOGLE_KEY, &names, "", fake_gemini);
    let args = ["run", "--timeout", "400", "--", "gemini", "-p", "hello"];
    let log = cli_run(
        &capsem,
        &api,
        &args,
        "generatecontent",
        "x-goog-api-key: ",
        REAL_GOOGLE_KEY,
    );
    let call = find(&log, |r| {
        r["provider"] == "google"
            && r["path"]
                .as_str()
                .is_some_and(|p| p.contains(":streamGenerateContent"))
    });
    assert_fake_tokens(call);
    assert_eq!(call["stop_reason"], "STOP", "{call}");
}

#[test]
fn a_policy_change_reaches_a_connection_already_open() {
    let (capsem, https, _http) = world();
    // One kept-alive HTTPS connection: a request, then (once the host has
    // changed the policy) another on the same connection.
    let script = r#"
import http.client, ssl, sys
conn = http.client.HTTPSConnection("allowed.test", timeout=30, context=ssl.create_default_context())
for turn in ("before", "after"):
    conn.request("GET", "/" + turn)
    response = conn.getresponse()
    response.read()
    print(turn, response.status, flush=True)
    if turn == "before":
        sys.stdin.readline()
"#;
    let mut child = capsem
        .cmd(&["run", "--", "python3", "-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(read_line(&mut child), "before 200\n");
    capsem.user_settings(&format!(
        "[network]\nresolve_override = \"allowed.test=127.0.0.1:{}\"\n",
        https.port
    ));
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "after 403\n");
    assert_eq!(https.requests().len(), 1, "the second request went out");
    let log = net_log(&capsem);
    let after = find(&log, |r| r["path"] == "/after");
    assert_eq!(after["decision"], "denied", "{after}");
    assert_eq!(after["rule"], "network.default_action", "{after}");
}
