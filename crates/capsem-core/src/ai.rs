//! The AI CLIs' defaults: what each run writes into the guest's fresh
//! `/root` and environment so that Claude Code, Gemini CLI and Codex start
//! in "yolo mode" (the VM is the sandbox) with no onboarding, trust or
//! update prompt and no telemetry.
//!
//! Every file comes from a setting (`ai.*`), so each can be overridden in
//! `~/.capsem/user.toml` or locked in `/etc/capsem/corp.toml`. The keys were
//! checked against the versions pinned in `images/rootfs/npm/package.json`
//! (Claude Code 2.1.332, Gemini CLI 0.61.0, Codex 0.171.0); see
//! `docs/ai-defaults.md` for each key, why, and what changed name.

use capsem_proto::GuestFile;

use crate::settings::Settings;

/// `~/.claude/settings.json`.
pub const CLAUDE_SETTINGS: &str = r#"{
  "permissions": {
    "defaultMode": "bypassPermissions"
  },
  "skipDangerousModePermissionPrompt": true,
  "env": {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"
  }
}
"#;

/// `~/.claude.json`.
pub const CLAUDE_STATE: &str = r#"{
  "hasCompletedOnboarding": true,
  "customApiKeyResponses": {
    "approved": ["e-host-holds-the-key"],
    "rejected": []
  },
  "hasTrustDialogAccepted": true,
  "hasTrustDialogHooksAccepted": true,
  "shiftEnterKeyBindingInstalled": true,
  "projects": {
    "/root": {
      "hasTrustDialogAccepted": true
    }
  }
}
"#;

/// `~/.gemini/settings.json`.
pub const GEMINI_SETTINGS: &str = r#"{
  "general": {
    "enableAutoUpdate": false,
    "enableAutoUpdateNotification": false
  },
  "ui": {
    "hideTips": true,
    "showShortcutsHint": false,
    "showHomeDirectoryWarning": false,
    "hideBanner": true
  },
  "privacy": {
    "usageStatisticsEnabled": false
  },
  "telemetry": {
    "enabled": false
  },
  "security": {
    "folderTrust": {
      "enabled": false
    },
    "auth": {
      "selectedType": "gemini-api-key"
    }
  },
  "tools": {
    "sandbox": false
  }
}
"#;

/// `~/.gemini/projects.json`.
pub const GEMINI_PROJECTS: &str = "{\n  \"projects\": {}\n}\n";

/// `~/.gemini/trustedFolders.json`.
pub const GEMINI_TRUSTED_FOLDERS: &str = "{\n  \"/root\": \"TRUST_FOLDER\"\n}\n";

/// `~/.codex/config.toml`.
pub const CODEX_CONFIG: &str = r#"approval_policy = "never"
sandbox_mode = "danger-full-access"
check_for_update_on_startup = false

[analytics]
enabled = false

[notice]
hide_full_access_warning = true

[projects."/root"]
trust_level = "trusted"
"#;

/// The files a run writes into the guest, from `settings`.
pub fn guest_files(settings: &Settings) -> Vec<GuestFile> {
    let file = |path: &str, key: &str| GuestFile {
        path: path.to_owned(),
        mode: 0o600,
        contents: settings.text(key).as_bytes().to_vec(),
    };
    vec![
        file("/root/.claude/settings.json", "ai.claude.settings_json"),
        file("/root/.claude.json", "ai.claude.state_json"),
        file("/root/.gemini/settings.json", "ai.gemini.settings_json"),
        file("/root/.gemini/projects.json", "ai.gemini.projects_json"),
        file(
            "/root/.gemini/trustedFolders.json",
            "ai.gemini.trusted_folders_json",
        ),
        GuestFile {
            path: "/root/.gemini/installation_id".to_owned(),
            mode: 0o600,
            // A new id every run: no identifier survives between sessions.
            contents: new_uuid().into_bytes(),
        },
        file("/root/.codex/config.toml", "ai.codex.config_toml"),
    ]
}

/// Marks `dir` (a workspace's directory in the guest) trusted in the
/// AI CLIs' files among `files`, as `/root` is, so that none asks whether
/// to trust the project it was started in. A file that does not parse
/// (a setting the user broke) is left as it is.
pub fn trust_project(files: &mut [GuestFile], dir: &str) {
    for file in files {
        let Ok(text) = std::str::from_utf8(&file.contents) else {
            continue;
        };
        let trusted = match file.path.as_str() {
            "/root/.claude.json" => with_json(text, |doc| {
                let projects = doc
                    .as_object_mut()?
                    .entry("projects")
                    .or_insert_with(|| serde_json::json!({}));
                projects.as_object_mut()?.insert(
                    dir.into(),
                    serde_json::json!({"hasTrustDialogAccepted": true}),
                );
                Some(())
            }),
            "/root/.gemini/trustedFolders.json" => with_json(text, |doc| {
                doc.as_object_mut()?
                    .insert(dir.into(), "TRUST_FOLDER".into());
                Some(())
            }),
            "/root/.codex/config.toml" => {
                text.parse::<toml_edit::DocumentMut>().ok().map(|mut doc| {
                    let projects = doc["projects"].or_insert(toml_edit::table());
                    if let Some(projects) = projects.as_table_mut() {
                        projects.set_implicit(true);
                        projects[dir]["trust_level"] = toml_edit::value("trusted");
                    }
                    doc.to_string()
                })
            }
            _ => None,
        };
        if let Some(trusted) = trusted {
            file.contents = trusted.into_bytes();
        }
    }
}

/// `text` as JSON, changed by `change`, as text again.
fn with_json(
    text: &str,
    change: impl FnOnce(&mut serde_json::Value) -> Option<()>,
) -> Option<String> {
    let mut doc: serde_json::Value = serde_json::from_str(text).ok()?;
    change(&mut doc)?;
    serde_json::to_string_pretty(&doc).ok()
}

/// A provider's API key: the settings prefix of its switch, domains, API
/// hosts and key, the variables the CLIs read it from, and where in a
/// request the provider's API takes it.
pub struct ApiKey {
    /// `ai.anthropic` etc.: `PREFIX.api_key`, `PREFIX.allow`,
    /// `PREFIX.domains`, `PREFIX.api_hosts`.
    pub prefix: &'static str,
    /// Environment variables that carry it.
    pub vars: &'static [&'static str],
    /// What the guest sees instead of the key.
    pub placeholder: &'static str,
    /// The places of a request the provider reads its key from; the
    /// placeholder is replaced there and nowhere else.
    pub carriers: &'static [Carrier],
}

/// Where a provider's API reads its key from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// A header whose whole value is the key (`x-api-key`).
    Header(&'static str),
    /// `Authorization: Bearer KEY`.
    Bearer,
    /// A query parameter whose value is the key (`?key=`).
    Query(&'static str),
}

/// The providers whose keys capsem holds for the guest.
pub const API_KEYS: &[ApiKey] = &[
    ApiKey {
        prefix: "ai.anthropic",
        vars: &["ANTHROPIC_API_KEY"],
        placeholder: "sk-ant-capsem-placeholder-the-host-holds-the-key",
        carriers: &[Carrier::Header("x-api-key"), Carrier::Bearer],
    },
    ApiKey {
        prefix: "ai.openai",
        // `codex exec` reads CODEX_API_KEY, not OPENAI_API_KEY.
        vars: &["OPENAI_API_KEY", "CODEX_API_KEY"],
        placeholder: "sk-capsem-placeholder-the-host-holds-the-key",
        carriers: &[Carrier::Bearer],
    },
    ApiKey {
        prefix: "ai.google",
        vars: &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
        placeholder: "capsem-placeholder-the-host-holds-the-key",
        carriers: &[Carrier::Header("x-goog-api-key"), Carrier::Query("key")],
    },
];

impl ApiKey {
    /// The real key from `settings`; empty when unset.
    pub fn value<'a>(&self, settings: &'a Settings) -> &'a str {
        settings.text(&format!("{}.api_key", self.prefix))
    }
}

/// The environment a run adds for the CLIs, before the user's own
/// (`guest.env.*`, `-e`) which override it:
/// - `IS_SANDBOX=1`: Claude Code refuses bypass-permissions mode as root
///   unless told it is in a sandbox, which it is;
/// - `CAPSEM_GEMINI_APPROVAL_MODE`: Gemini CLI accepts YOLO mode only on its
///   command line, so the guest's `gemini` wrapper passes this;
/// - for each provider API key set in settings, a placeholder: the real
///   key never enters the guest; capsem's proxy puts it in requests to
///   that provider's allowed domains. Keys are never taken from the host's
///   environment without being asked (`--pass-env`, which passes the real
///   value).
pub fn guest_env(settings: &Settings) -> Vec<(String, String)> {
    let mut env = vec![
        ("IS_SANDBOX".to_owned(), "1".to_owned()),
        (
            "CAPSEM_GEMINI_APPROVAL_MODE".to_owned(),
            settings.text("ai.gemini.approval_mode").to_owned(),
        ),
    ];
    for key in API_KEYS.iter().filter(|k| !k.value(settings).is_empty()) {
        env.extend(
            key.vars
                .iter()
                .map(|var| ((*var).to_owned(), key.placeholder.to_owned())),
        );
    }
    env
}

/// A random version-4 UUID.
fn new_uuid() -> String {
    use rand::RngExt;
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workspace_is_trusted_by_every_ai_cli() {
        let mut files = guest_files(&Settings::defaults());
        trust_project(&mut files, "/root/my app");
        let text = |path: &str| {
            let file = files.iter().find(|f| f.path == path).unwrap();
            String::from_utf8(file.contents.clone()).unwrap()
        };
        let claude: serde_json::Value = serde_json::from_str(&text("/root/.claude.json")).unwrap();
        assert_eq!(
            claude["projects"]["/root/my app"]["hasTrustDialogAccepted"],
            true
        );
        assert_eq!(claude["projects"]["/root"]["hasTrustDialogAccepted"], true);
        let gemini: serde_json::Value =
            serde_json::from_str(&text("/root/.gemini/trustedFolders.json")).unwrap();
        assert_eq!(gemini["/root/my app"], "TRUST_FOLDER");
        let codex: toml::Table = text("/root/.codex/config.toml").parse().unwrap();
        assert_eq!(
            codex["projects"]["/root/my app"]["trust_level"].as_str(),
            Some("trusted")
        );
        assert_eq!(codex["approval_policy"].as_str(), Some("never"));
    }

    #[test]
    fn defaults_are_valid_and_set_yolo_mode() {
        for json in [
            CLAUDE_SETTINGS,
            CLAUDE_STATE,
            GEMINI_SETTINGS,
            GEMINI_PROJECTS,
            GEMINI_TRUSTED_FOLDERS,
        ] {
            assert!(
                serde_json::from_str::<serde_json::Value>(json)
                    .unwrap()
                    .is_object()
            );
        }
        let claude: serde_json::Value = serde_json::from_str(CLAUDE_SETTINGS).unwrap();
        assert_eq!(claude["permissions"]["defaultMode"], "bypassPermissions");
        assert_eq!(
            claude["env"]["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"],
            "1"
        );
        let codex: toml::Table = CODEX_CONFIG.parse().unwrap();
        assert_eq!(codex["approval_policy"].as_str(), Some("never"));
        assert_eq!(codex["sandbox_mode"].as_str(), Some("danger-full-access"));
    }

    #[test]
    fn claude_code_has_the_placeholder_key_approved() {
        // Claude Code records an approved key by its last 20 characters.
        let state: serde_json::Value = serde_json::from_str(CLAUDE_STATE).unwrap();
        let placeholder = API_KEYS[0].placeholder;
        let tail = &placeholder[placeholder.len() - 20..];
        assert_eq!(state["customApiKeyResponses"]["approved"][0], tail);
    }

    #[test]
    fn every_file_is_a_valid_guest_file() {
        let files = guest_files(&Settings::defaults());
        capsem_proto::validate_files(&files).unwrap();
        assert_eq!(files.len(), 7);
        let id = &files[5];
        assert_eq!(id.contents.len(), 36);
        assert_ne!(guest_files(&Settings::defaults())[5].contents, id.contents);
    }

    #[test]
    fn api_keys_reach_the_guest_only_when_set() {
        let env = guest_env(&Settings::defaults());
        assert!(env.iter().all(|(k, _)| !k.ends_with("_API_KEY")), "{env:?}");
        assert!(env.contains(&("CAPSEM_GEMINI_APPROVAL_MODE".into(), "yolo".into())));
    }

    #[test]
    fn a_key_set_in_settings_reaches_the_guest_only_as_a_placeholder() {
        let settings = crate::settings::from_user_text("[ai.anthropic]\napi_key = \"sk-real\"\n");
        let env = guest_env(&settings);
        assert!(env.contains(&("ANTHROPIC_API_KEY".into(), API_KEYS[0].placeholder.into())));
        assert!(env.iter().all(|(_, v)| !v.contains("sk-real")), "{env:?}");
        assert!(env.iter().all(|(k, _)| k != "OPENAI_API_KEY"), "{env:?}");
    }
}
