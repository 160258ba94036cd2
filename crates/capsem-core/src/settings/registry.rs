//! Every setting Capsem knows: its key, type, default and meaning.
//!
//! A key is a dotted path (`vm.cpus`), stored in the TOML files as a table
//! path (`[vm]` / `cpus = 2`).

use crate::ai;

/// The type of a setting and what values it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `true` or `false`.
    Bool,
    /// An integer within the inclusive range.
    Int {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
    },
    /// One of these strings.
    Choice(&'static [&'static str]),
    /// Any string.
    Text,
    /// A string holding a JSON object (a file's content).
    Json,
    /// A string holding a TOML document (a file's content).
    Toml,
    /// A string never shown in full (an API key); empty means unset.
    Secret,
    /// Comma-separated domain patterns: `example.com` (that name only),
    /// `*.example.com` (its subdomains) or `*` (every name).
    Domains,
    /// Comma-separated `name=ip:port` pairs.
    Overrides,
    /// Comma-separated address ranges (`10.1.0.0/16`, `fd00::/8`, or one
    /// address).
    Ranges,
    /// An absolute path to a PEM file of CA certificates, or empty;
    /// checked when set.
    CaFile,
    /// Comma-separated file globs (`.env, *.pem, secrets/**`).
    Globs,
}

/// A default value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// For [`Kind::Bool`].
    Bool(bool),
    /// For [`Kind::Int`].
    Int(i64),
    /// For [`Kind::Choice`] and the string kinds.
    Str(&'static str),
}

/// One setting.
#[derive(Debug, Clone, Copy)]
pub struct Def {
    /// Dotted key.
    pub key: &'static str,
    /// Type and accepted values.
    pub kind: Kind,
    /// Value when no file sets it.
    pub default: Default,
    /// One line for `capsem settings list`.
    pub description: &'static str,
}

/// All settings.
pub const REGISTRY: &[Def] = &[
    Def {
        key: "vm.accel",
        kind: Kind::Choice(&["auto", "kvm", "tcg"]),
        default: Default::Str("auto"),
        description: "accelerator: KVM when usable (auto), KVM or fail, or TCG emulation",
    },
    Def {
        key: "vm.cpus",
        kind: Kind::Int { min: 1, max: 64 },
        default: Default::Int(2),
        description: "vCPUs of each VM",
    },
    Def {
        key: "vm.memory_mib",
        kind: Kind::Int {
            min: 128,
            max: 65536,
        },
        default: Default::Int(1024),
        description: "guest RAM in MiB",
    },
    Def {
        key: "vm.boot_timeout_secs",
        kind: Kind::Int { min: 1, max: 3600 },
        default: Default::Int(60),
        description: "how long the guest agent may take to answer after the VM starts",
    },
    Def {
        key: "vm.snapshot_start",
        kind: Kind::Bool,
        default: Default::Bool(true),
        description: "start one-shot runs and named sandboxes from a boot template (a snapshot of a booted VM) instead of booting",
    },
    Def {
        key: "vm.timeout_secs",
        kind: Kind::Int {
            min: 0,
            max: 604_800,
        },
        default: Default::Int(0),
        description: "kill a command's VM after this many seconds (0: no limit; --timeout wins)",
    },
    Def {
        key: "guest.root",
        kind: Kind::Choice(&["overlay", "read-only"]),
        default: Default::Str("overlay"),
        description: "the guest's system: writable for the session over the read-only image (overlay), or read-only",
    },
    Def {
        key: "guest.shell.term",
        kind: Kind::Text,
        default: Default::Str("xterm-256color"),
        description: "TERM for guest terminals when capsem's own terminal sets none",
    },
    Def {
        key: "sessions.retention_days",
        kind: Kind::Int { min: 0, max: 36500 },
        default: Default::Int(30),
        description: "sessions older than this are pruned (0 keeps them forever)",
    },
    Def {
        key: "sessions.max_count",
        kind: Kind::Int {
            min: 0,
            max: 1_000_000,
        },
        default: Default::Int(1000),
        description: "at most this many sessions are kept (0 for no limit)",
    },
    Def {
        key: "sessions.max_session_mib",
        kind: Kind::Int {
            min: 1,
            max: 1_048_576,
        },
        default: Default::Int(256),
        description: "most MiB one session's events and terminal transcript may take on disk (what is over is counted, not kept)",
    },
    Def {
        key: "sandbox.disk_gib",
        kind: Kind::Int { min: 1, max: 4096 },
        default: Default::Int(8),
        description: "size in GiB of a named sandbox's own disk at /root (sparse: it takes only what is written)",
    },
    Def {
        key: "sandbox.idle_timeout_secs",
        kind: Kind::Int {
            min: 0,
            max: 31_536_000,
        },
        default: Default::Int(0),
        description: "stop (never delete) a named sandbox after this many seconds without a command; 0 never",
    },
    Def {
        key: "sandbox.max_copy_bytes",
        kind: Kind::Int {
            min: 1,
            max: 1 << 50,
        },
        default: Default::Int(4 << 30),
        description: "most bytes one `capsem cp` out of a sandbox may write on the host (what is over refuses the copy)",
    },
    Def {
        key: "sandbox.max_running",
        kind: Kind::Int { min: 1, max: 1024 },
        default: Default::Int(20),
        description: "most named sandboxes running at once; starting one more is refused",
    },
    Def {
        key: "workspace.auto",
        kind: Kind::Choice(&["ai", "always", "never"]),
        default: Default::Str("ai"),
        description: "which runs get the git work tree around the current directory as their workspace without -w: the AI CLIs (ai), every run (always) or none (never)",
    },
    Def {
        key: "workspace.exclude",
        kind: Kind::Globs,
        default: Default::Str(""),
        description: "comma-separated globs of workspace files the guest may never read (.env, *.pem: any depth; secrets/**: from the project's root); the host hides them",
    },
    Def {
        key: "ai.claude.settings_json",
        kind: Kind::Json,
        default: Default::Str(ai::CLAUDE_SETTINGS),
        description: "Claude Code's ~/.claude/settings.json (bypass permissions, no nonessential traffic)",
    },
    Def {
        key: "ai.claude.state_json",
        kind: Kind::Json,
        default: Default::Str(ai::CLAUDE_STATE),
        description: "Claude Code's ~/.claude.json (onboarding done, /root trusted)",
    },
    Def {
        key: "ai.gemini.settings_json",
        kind: Kind::Json,
        default: Default::Str(ai::GEMINI_SETTINGS),
        description: "Gemini CLI's ~/.gemini/settings.json (no updates, telemetry, tips or folder trust)",
    },
    Def {
        key: "ai.gemini.projects_json",
        kind: Kind::Json,
        default: Default::Str(ai::GEMINI_PROJECTS),
        description: "Gemini CLI's ~/.gemini/projects.json",
    },
    Def {
        key: "ai.gemini.trusted_folders_json",
        kind: Kind::Json,
        default: Default::Str(ai::GEMINI_TRUSTED_FOLDERS),
        description: "Gemini CLI's ~/.gemini/trustedFolders.json (/root trusted)",
    },
    Def {
        key: "ai.gemini.approval_mode",
        kind: Kind::Choice(&["default", "auto_edit", "plan", "yolo"]),
        default: Default::Str("yolo"),
        description: "the approval mode `gemini` starts in (it accepts yolo only on its command line)",
    },
    Def {
        key: "ai.codex.config_toml",
        kind: Kind::Toml,
        default: Default::Str(ai::CODEX_CONFIG),
        description: "Codex's ~/.codex/config.toml (never ask, its own sandbox off, no update check)",
    },
    Def {
        key: "ai.anthropic.api_key",
        kind: Kind::Secret,
        default: Default::Str(""),
        description: "Anthropic API key, held on the host: the guest sees a placeholder in ANTHROPIC_API_KEY",
    },
    Def {
        key: "ai.openai.api_key",
        kind: Kind::Secret,
        default: Default::Str(""),
        description: "OpenAI API key, held on the host: the guest sees a placeholder in OPENAI_API_KEY and CODEX_API_KEY",
    },
    Def {
        key: "ai.google.api_key",
        kind: Kind::Secret,
        default: Default::Str(""),
        description: "Gemini API key, held on the host: the guest sees a placeholder in GEMINI_API_KEY/GOOGLE_API_KEY",
    },
    Def {
        key: "network.default_action",
        kind: Kind::Choice(&["deny", "allow"]),
        default: Default::Str("deny"),
        description: "what happens to a name no allow or deny list matches",
    },
    Def {
        key: "network.allow",
        kind: Kind::Domains,
        default: Default::Str(""),
        description: "names guest programs may reach, e.g. \"example.com, *.example.org\"",
    },
    Def {
        key: "network.deny",
        kind: Kind::Domains,
        default: Default::Str(""),
        description: "names guest programs may never reach (wins over every allow)",
    },
    Def {
        key: "ai.anthropic.allow",
        kind: Kind::Bool,
        default: Default::Bool(true),
        description: "let guest programs reach Anthropic's API (Claude Code)",
    },
    Def {
        key: "ai.anthropic.domains",
        kind: Kind::Domains,
        default: Default::Str("*.anthropic.com, *.claude.com"),
        description: "the names of Anthropic's API (Claude Code)",
    },
    Def {
        key: "ai.anthropic.api_hosts",
        kind: Kind::Domains,
        default: Default::Str("api.anthropic.com"),
        description: "the only names the Anthropic API key is sent to (over HTTPS, in the API's own key header)",
    },
    Def {
        key: "ai.openai.allow",
        kind: Kind::Bool,
        default: Default::Bool(true),
        description: "let guest programs reach OpenAI's API (Codex)",
    },
    Def {
        key: "ai.openai.domains",
        kind: Kind::Domains,
        default: Default::Str("*.openai.com, *.chatgpt.com"),
        description: "the names of OpenAI's API (Codex)",
    },
    Def {
        key: "ai.openai.api_hosts",
        kind: Kind::Domains,
        default: Default::Str("api.openai.com"),
        description: "the only names the OpenAI API key is sent to (over HTTPS, in the API's own key header)",
    },
    Def {
        key: "ai.google.allow",
        kind: Kind::Bool,
        default: Default::Bool(true),
        description: "let guest programs reach Google's Gemini API (Gemini CLI)",
    },
    Def {
        key: "ai.google.domains",
        kind: Kind::Domains,
        default: Default::Str("*.googleapis.com"),
        description: "the names of Google's Gemini API (Gemini CLI)",
    },
    Def {
        key: "ai.google.api_hosts",
        kind: Kind::Domains,
        default: Default::Str("generativelanguage.googleapis.com"),
        description: "the only names the Gemini API key is sent to (over HTTPS, in the API's own key header)",
    },
    Def {
        key: "registry.npm.allow",
        kind: Kind::Bool,
        default: Default::Bool(false),
        description: "let guest programs reach the npm registry",
    },
    Def {
        key: "registry.npm.domains",
        kind: Kind::Domains,
        default: Default::Str("registry.npmjs.org"),
        description: "the names of the npm registry",
    },
    Def {
        key: "registry.pypi.allow",
        kind: Kind::Bool,
        default: Default::Bool(false),
        description: "let guest programs reach PyPI",
    },
    Def {
        key: "registry.pypi.domains",
        kind: Kind::Domains,
        default: Default::Str("pypi.org, files.pythonhosted.org"),
        description: "the names of PyPI",
    },
    Def {
        key: "registry.github.allow",
        kind: Kind::Bool,
        default: Default::Bool(false),
        description: "let guest programs reach GitHub",
    },
    Def {
        key: "registry.github.domains",
        kind: Kind::Domains,
        default: Default::Str("github.com, *.github.com, *.githubusercontent.com"),
        description: "the names of GitHub",
    },
    Def {
        key: "registry.crates.allow",
        kind: Kind::Bool,
        default: Default::Bool(false),
        description: "let guest programs reach crates.io",
    },
    Def {
        key: "registry.crates.domains",
        kind: Kind::Domains,
        default: Default::Str("crates.io, *.crates.io"),
        description: "the names of crates.io",
    },
    Def {
        key: "registry.debian.allow",
        kind: Kind::Bool,
        default: Default::Bool(false),
        description: "let guest programs reach Debian's archive (apt-get update and install)",
    },
    Def {
        key: "registry.debian.domains",
        kind: Kind::Domains,
        default: Default::Str("deb.debian.org, security.debian.org"),
        description: "the names of Debian's archive",
    },
    Def {
        key: "network.log_bodies",
        kind: Kind::Bool,
        default: Default::Bool(false),
        description: "keep request and response bodies in the session (as text, up to network.max_body_bytes each)",
    },
    Def {
        key: "network.max_body_bytes",
        kind: Kind::Int {
            min: 0,
            max: 16 * 1024 * 1024,
        },
        default: Default::Int(64 * 1024),
        description: "most bytes of each body kept when network.log_bodies is on",
    },
    Def {
        key: "network.allow_upstream_ranges",
        kind: Kind::Ranges,
        default: Default::Str(""),
        description: "non-public address ranges the proxy may connect to, e.g. \"10.1.0.0/16\" (loopback, private, link-local and the like are refused otherwise)",
    },
    Def {
        key: "network.resolve_override",
        kind: Kind::Overrides,
        default: Default::Str(""),
        description: "test/debug: connect to these names at these addresses, e.g. \"api.example.com=127.0.0.1:8443\"",
    },
    Def {
        key: "network.extra_upstream_ca",
        kind: Kind::CaFile,
        default: Default::Str(""),
        description: "test/debug: a PEM file of CAs trusted for upstream servers besides the system's",
    },
    Def {
        key: "ui.theme",
        kind: Kind::Choice(&["system", "light", "dark"]),
        default: Default::Str("system"),
        description: "colour theme of the web UI (capsem ui)",
    },
    Def {
        key: "ui.font_size",
        kind: Kind::Int { min: 8, max: 32 },
        default: Default::Int(13),
        description: "terminal font size of the web UI (capsem ui)",
    },
    Def {
        key: "ui.port",
        kind: Kind::Int { min: 1, max: 65535 },
        default: Default::Int(7317),
        description: "TCP port on 127.0.0.1 the web UI (capsem ui) listens on",
    },
    Def {
        key: "e2b.port",
        kind: Kind::Int { min: 1, max: 65535 },
        default: Default::Int(3000),
        description: "TCP port on 127.0.0.1 the E2B-compatible API (capsem e2b) listens on",
    },
    Def {
        key: "e2b.api_key",
        kind: Kind::Secret,
        default: Default::Str(""),
        description: "the key E2B clients send as X-API-KEY (E2B_API_KEY) to capsem e2b; generated on its first start when unset",
    },
];

/// Keys under this prefix are environment variables of guest commands
/// (`guest.env.NAME = "value"`), not registry entries.
pub const GUEST_ENV_PREFIX: &str = "guest.env.";

/// The definition of `key`.
pub fn lookup(key: &str) -> Option<&'static Def> {
    REGISTRY.iter().find(|def| def.key == key)
}

/// The known key nearest to an unknown `key`, if one is a few edits away.
pub fn nearest(key: &str) -> Option<&'static str> {
    REGISTRY
        .iter()
        .map(|def| (strsim::damerau_levenshtein(key, def.key), def.key))
        .filter(|(distance, _)| *distance <= 3)
        .min()
        .map(|(_, near)| near)
}
