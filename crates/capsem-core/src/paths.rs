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

/// Parent of the per-VM runtime directories that hold sockets: short, so
/// socket paths stay under the 108-byte limit.
pub fn runtime_root() -> PathBuf {
    match path_var(env::XDG_RUNTIME_DIR) {
        Some(dir) => dir.join("capsem"),
        None => PathBuf::from(format!("/tmp/capsem-{}", nix::unistd::getuid())),
    }
}
