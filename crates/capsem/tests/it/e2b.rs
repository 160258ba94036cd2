//! `capsem e2b` driven by E2B's official SDKs, unchanged: Python
//! (`tests/clients/e2b_client.py`, in the venv `cargo xtask test` builds)
//! and JS (`tests/clients/js/e2b_client.mjs`, npm `e2b`), against a real
//! service and real VMs.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};

use crate::mcp::{clients, clients_python, script};
use crate::sandboxes::Service;
use crate::support::{assert_code, stdout};
use crate::ui::free_port;

/// `capsem e2b --port PORT` running; the key it printed.
fn serve(service: &Service, port: u16) -> (Child, String) {
    let mut child = service
        .capsem
        .cmd(&["e2b", "--port", &port.to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let key = loop {
        let line = lines.next().expect("capsem e2b printed its key").unwrap();
        if let Some((_, key)) = line.split_once("E2B_API_KEY=") {
            break key.trim().to_owned();
        }
    };
    // Keep draining its stderr so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, key)
}

#[test]
fn unchanged_e2b_sdk_code_runs_against_capsem_e2b() {
    let service = Service::new();
    let port = free_port();
    let (mut e2b, key) = serve(&service, port);
    let saved = std::fs::read_to_string(service.capsem.home().join("user.toml")).unwrap();
    assert!(
        saved.contains(&key),
        "the generated key is saved in settings: {saved}"
    );
    let url = format!("http://127.0.0.1:{port}");
    let sdk = |program: PathBuf, script: PathBuf| {
        let out = std::process::Command::new(program)
            .arg(script)
            .current_dir(service.capsem.home())
            .env("E2B_API_URL", &url)
            .env("E2B_SANDBOX_URL", &url)
            .env("E2B_API_KEY", &key)
            .output()
            .unwrap();
        assert_code(&out, 0);
        stdout(&out)
    };
    let python = sdk(clients_python(), script("e2b_client.py"));
    assert!(python.ends_with("e2b_client: done\n"), "{python}");
    let js = sdk(
        clients().join("bin/node"),
        clients().join("js/e2b_client.mjs"),
    );
    assert!(js.ends_with("e2b_client.mjs: done\n"), "{js}");
    // Its sandboxes are capsem's: their boots are sessions.
    let sessions = service.ok(&["sessions", "--json"]);
    assert!(
        sessions.matches("\"type\":\"session\"").count() >= 2,
        "{sessions}"
    );

    // A sandbox with a command streaming is deleted when capsem e2b
    // stops, and the open stream does not hold the stop up.
    let mut holder = std::process::Command::new(clients_python())
        .args([script("e2b_client.py").as_os_str(), "hold".as_ref()])
        .env("E2B_API_URL", &url)
        .env("E2B_SANDBOX_URL", &url)
        .env("E2B_API_KEY", &key)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert!(said.starts_with("holding "), "{said}");
    assert!(
        service
            .list()
            .iter()
            .any(|s| s["name"].as_str().unwrap().starts_with("e2b-"))
    );
    let term = std::process::Command::new("kill")
        .args(["-TERM", &e2b.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(e2b.wait().unwrap().success());
    holder.kill().unwrap();
    holder.wait().unwrap();
    let left: Vec<_> = service
        .list()
        .into_iter()
        .map(|s| s["name"].clone())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
