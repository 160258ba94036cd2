//! The AI CLIs in the guest, with Capsem's defaults written into a fresh
//! /root at every boot, from settings.

use std::process::Command;
use std::time::Duration;

use expectrl::{Expect, Session};

use crate::support::{Capsem, assert_code, stdout};

/// Every injected file, as `settings get` spells its content.
const FILES: &[(&str, &str)] = &[
    ("/root/.claude/settings.json", "ai.claude.settings_json"),
    ("/root/.claude.json", "ai.claude.state_json"),
    ("/root/.gemini/settings.json", "ai.gemini.settings_json"),
    ("/root/.gemini/projects.json", "ai.gemini.projects_json"),
    (
        "/root/.gemini/trustedFolders.json",
        "ai.gemini.trusted_folders_json",
    ),
    ("/root/.codex/config.toml", "ai.codex.config_toml"),
];

#[test]
fn each_injected_file_has_exactly_its_settings_content() {
    let capsem = Capsem::new();
    capsem.user_settings("[ai.codex]\nconfig_toml = \"approval_policy = 'on-request'\\n\"\n");
    let script: String = FILES
        .iter()
        .map(|(path, _)| format!("stat -c %a {path}; cat {path}; echo '@@'; "))
        .collect::<String>()
        + "stat -c '%a %s' /root/.gemini/installation_id";
    let out = capsem.run(&["-q", &script]);
    assert_code(&out, 0);
    let text = stdout(&out);
    let mut parts = text.split("@@\n");
    for (path, key) in FILES {
        let part = parts.next().unwrap();
        let (mode, content) = part.split_once('\n').unwrap();
        assert_eq!(mode, "600", "{path}");
        let expected = stdout(&capsem.run(&["settings", "get", key]));
        assert_eq!(content, expected, "{path} differs from {key}");
    }
    assert_eq!(parts.next().unwrap(), "600 36\n");
    assert!(
        text.contains("approval_policy = 'on-request'"),
        "the user override did not apply"
    );
}

#[test]
fn settings_and_flags_shape_the_guest_environment() {
    let capsem = Capsem::new();
    let corp = capsem.home().join("corp.toml");
    std::fs::write(&corp, "[ai.gemini]\napproval_mode = \"plan\"\n").unwrap();
    capsem.user_settings(
        "[ai.gemini]\napproval_mode = \"yolo\"\n[ai.openai]\napi_key = \"sk-from-settings\"\n[guest.env]\nEDITOR = \"nano\"\n",
    );
    let out = capsem
        .cmd(&["-q", "--pass-env", "PASSED", "env | sort | grep -E '^(CAPSEM_GEMINI|CODEX|OPENAI|ANTHROPIC|EDITOR|IS_SANDBOX|PASSED|HOST_ONLY)'"])
        .env("CAPSEM_CORP_CONFIG", &corp)
        .env("ANTHROPIC_API_KEY", "sk-host-must-not-leak")
        .env("HOST_ONLY", "x")
        .env("PASSED", "yes")
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert_eq!(
        stdout(&out),
        "CAPSEM_GEMINI_APPROVAL_MODE=plan\n\
         CODEX_API_KEY=sk-capsem-placeholder-the-host-holds-the-key\n\
         EDITOR=nano\nIS_SANDBOX=1\n\
         OPENAI_API_KEY=sk-capsem-placeholder-the-host-holds-the-key\nPASSED=yes\n"
    );
}

#[test]
fn the_ai_clis_are_installed_at_their_pinned_versions() {
    let out = Capsem::new().run(&["-q", "claude --version; gemini --version; codex --version"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    let pins = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../images/rootfs/npm/package.json"
    ))
    .unwrap();
    let pins: serde_json::Value = serde_json::from_str(&pins).unwrap();
    for (package, line) in [
        ("@anthropic-ai/claude-code", text.lines().next().unwrap()),
        ("@google/gemini-cli", text.lines().nth(1).unwrap()),
        ("@openai/codex", text.lines().nth(2).unwrap()),
    ] {
        let version = pins["dependencies"][package].as_str().unwrap();
        assert!(
            line.contains(version),
            "{package}: {line} (pinned {version})"
        );
    }
}

/// Starts `cli` bare (`capsem claude`) from a terminal, with an API key
/// set in `settings`, and waits for `ready`; fails if any of `prompts`
/// showed up on the way. A bare AI CLI on a terminal gets a guest
/// terminal without `-t`.
/// `cd project && capsem CLI`: the CLI starts in the project (a git work
/// tree, so the workspace by default) without asking anything.
fn starts_without_prompts(cli: &str, settings: &str, ready: &str, prompts: &[&str]) {
    let capsem = Capsem::new();
    capsem.user_settings(settings);
    let top = tempfile::tempdir().unwrap();
    let project = top.path().join("myapp");
    std::fs::create_dir_all(project.join(".git")).unwrap();
    std::fs::write(project.join("README"), "a project\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capsem"));
    cmd.args(["-q", cli])
        .current_dir(&project)
        .env("CAPSEM_HOME", capsem.home())
        .env("CAPSEM_CORP_CONFIG", capsem.home().join("no-corp.toml"))
        .env("TERM", "xterm-256color");
    let mut session = Session::spawn(cmd).unwrap();
    session.get_process_mut().set_window_size(120, 40).unwrap();
    session.set_expect_timeout(Some(Duration::from_secs(240)));
    let found = session
        .expect(ready)
        .unwrap_or_else(|e| panic!("{cli} never showed {ready:?}: {e}"));
    let screen = String::from_utf8_lossy(found.before()).into_owned();
    for prompt in prompts {
        assert!(
            !screen.contains(prompt),
            "{cli} stopped at {prompt:?}:\n{screen}"
        );
    }
    let _ = session.get_process_mut().exit(true);
}

#[test]
fn claude_code_starts_in_bypass_mode_without_onboarding_or_trust_prompts() {
    starts_without_prompts(
        "claude",
        "[ai.anthropic]\napi_key = \"sk-ant-api03-a-key-set-in-settings\"\n",
        "bypass permissions on",
        &[
            "Do you trust",
            "Choose the text style",
            "Let's get started",
            "Bypass Permissions mode",
            "Detected a custom API key",
        ],
    );
}

#[test]
fn gemini_cli_starts_in_yolo_mode_without_auth_or_trust_prompts() {
    starts_without_prompts(
        "gemini",
        "[ai.google]\napi_key = \"AIza-a-key-set-in-settings\"\n",
        "Type your message",
        &[
            "Do you trust",
            "How would you like to authenticate",
            "Automatic update",
        ],
    );
}

#[test]
fn codex_starts_without_trust_or_sign_in_prompts() {
    starts_without_prompts(
        "codex",
        "[ai.openai]\napi_key = \"sk-proj-a-key-set-in-settings\"\n",
        "Ask Codex to do anything",
        &[
            "trust the contents",
            "Sign in with ChatGPT",
            "Update available",
        ],
    );
}
