//! The guest's network: every connection goes through capsem's policy
//! proxy, and every decision lands in the session. The "internet" is local
//! servers reached through `network.resolve_override`.

use serde_json::Value;

use crate::support::{Capsem, assert_code, stdout};
use crate::upstream::{TestCa, Upstream};

/// A capsem that allows `allowed.test` (HTTPS) and `plain.test` (HTTP),
/// both served locally.
fn world() -> (Capsem, Upstream, Upstream) {
    let capsem = Capsem::new();
    let ca = TestCa::new(capsem.home());
    let https = Upstream::https(&ca, &["allowed.test"]);
    let http = Upstream::http();
    capsem.user_settings(&format!(
        "[network]\n\
         allow = \"allowed.test, plain.test\"\n\
         resolve_override = \"allowed.test=127.0.0.1:{}, plain.test=127.0.0.1:{}\"\n\
         extra_upstream_ca = \"{}\"\n",
        https.port,
        http.port,
        ca.pem.display()
    ));
    (capsem, https, http)
}

/// The session's network log.
fn net_log(capsem: &Capsem) -> Vec<Value> {
    let out = capsem.run(&["net", "log", "--json"]);
    assert_code(&out, 0);
    stdout(&out)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["data"].clone())
        .collect()
}

fn find(log: &[Value], pred: impl Fn(&Value) -> bool) -> &Value {
    log.iter()
        .find(|row| pred(row))
        .unwrap_or_else(|| panic!("no such row in {log:#?}"))
}

#[test]
fn allowed_requests_reach_their_servers_and_are_logged() {
    let (capsem, https, http) = world();
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

    let show = capsem.run(&["sessions", "show", &session_id(&capsem)]);
    assert!(
        stdout(&show).contains("network   2 allowed, 0 denied"),
        "{}",
        stdout(&show)
    );
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
    let show = capsem.run(&["sessions", "show", "--json", &session_id(&capsem)]);
    let show: Value = serde_json::from_str(&stdout(&show)).unwrap();
    let network = &show["data"]["events"]["network"];
    assert!(network["dns_denied"].as_u64().unwrap() >= 1, "{network}");
}

fn session_id(capsem: &Capsem) -> String {
    let out = capsem.run(&["sessions", "--json", "-n", "1"]);
    let row: Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    row["data"]["id"].as_str().unwrap().to_owned()
}
