//! Where Capsem keeps things on the host.

use std::path::PathBuf;

use crate::env::{self, path_var};

/// Per-user state: settings, sessions, the asset verification cache.
/// `$CAPSEM_HOME`, else `~/.capsem`.
pub fn capsem_home() -> PathBuf {
    path_var(env::CAPSEM_HOME)
        .or_else(|| path_var(env::HOME).map(|home| home.join(".capsem")))
        .unwrap_or_else(|| PathBuf::from("/root/.capsem"))
}

/// The user settings file.
pub fn user_settings() -> PathBuf {
    capsem_home().join("user.toml")
}

/// The corporate settings file. `$CAPSEM_CORP_CONFIG`, else
/// `/etc/capsem/corp.toml`.
pub fn corp_settings() -> PathBuf {
    path_var(env::CAPSEM_CORP_CONFIG).unwrap_or_else(|| PathBuf::from("/etc/capsem/corp.toml"))
}

/// Boot templates, shared by every capsem home of the user (they hold
/// only what the assets boot to): `$XDG_CACHE_HOME/capsem/templates`,
/// else `~/.cache/capsem/templates`.
pub fn templates() -> PathBuf {
    path_var(env::XDG_CACHE_HOME)
        .or_else(|| path_var(env::HOME).map(|home| home.join(".cache")))
        .unwrap_or_else(|| capsem_home().join("cache"))
        .join("capsem/templates")
}
