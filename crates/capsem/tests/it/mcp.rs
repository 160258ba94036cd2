//! `capsem mcp` driven by a client nobody here wrote: the official Python
//! MCP SDK (`tests/clients/mcp_client.py`, in the venv `cargo xtask test`
//! builds), against a real service and a real VM.

use std::path::PathBuf;
use std::process::Command;

use crate::sandboxes::Service;
use crate::support::{assert_code, stdout};

/// The tests' client libraries (`cargo xtask build-clients`): a venv and
/// E2B's JS SDK.
pub fn clients() -> PathBuf {
    std::env::var_os("CAPSEM_TEST_CLIENTS")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            let pointer = PathBuf::from(home).join(".cache/capsem/clients.current");
            std::fs::read_to_string(pointer).ok().map(PathBuf::from)
        })
        .expect("no client libraries: run `cargo xtask build-clients` (cargo xtask test does)")
}

/// The venv's python.
pub fn clients_python() -> PathBuf {
    clients().join("venv/bin/python")
}

pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/clients")
        .join(name)
}

#[test]
fn the_python_mcp_sdk_runs_a_sandbox_through_capsem_mcp() {
    let service = Service::new();
    let home = service.capsem.home();
    let out = Command::new(clients_python())
        .arg(script("mcp_client.py"))
        .current_dir(home)
        .env("CAPSEM_BIN", env!("CARGO_BIN_EXE_capsem"))
        .env("CAPSEM_HOME", home)
        .env("CAPSEM_CORP_CONFIG", home.join("no-corp.toml"))
        .env_remove("CAPSEM_LOG")
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert!(stdout(&out).ends_with("mcp_client: done\n"));
    // What it did is capsem's like any other sandbox: its boot is a session.
    let sessions = service.ok(&["sessions", "--json"]);
    assert!(sessions.contains("\"type\":\"session\""), "{sessions}");
    assert!(service.list().iter().all(|s| s["name"] != "mcp-sbx"));
}
