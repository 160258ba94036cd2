//! Every environment variable Capsem reads, in one place.

use std::path::PathBuf;

/// Moves Capsem's per-user state (settings, sessions). Default `~/.capsem`.
pub const CAPSEM_HOME: &str = "CAPSEM_HOME";
/// Moves the corporate settings file. Default `/etc/capsem/corp.toml`.
pub const CAPSEM_CORP_CONFIG: &str = "CAPSEM_CORP_CONFIG";
/// Runs the VM from assets in this directory instead of the directory the
/// build recorded. Their hashes must still match the ones compiled in.
pub const CAPSEM_ASSETS_DIR: &str = "CAPSEM_ASSETS_DIR";
/// The QEMU binary to run. Default `qemu-system-x86_64` from `PATH`.
pub const CAPSEM_QEMU: &str = "CAPSEM_QEMU";
/// Log filter for Capsem's own diagnostics (`tracing` syntax, e.g. `debug`).
pub const CAPSEM_LOG: &str = "CAPSEM_LOG";
/// The user's home, for the default of [`CAPSEM_HOME`].
pub const HOME: &str = "HOME";
/// The user's cache directory, where boot templates are kept.
pub const XDG_CACHE_HOME: &str = "XDG_CACHE_HOME";

/// The value of `name` as a path, if set and not empty.
pub fn path_var(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}
