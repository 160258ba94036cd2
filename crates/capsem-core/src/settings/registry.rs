//! Every setting Capsem knows: its key, type, default and meaning.
//!
//! A key is a dotted path (`vm.cpus`), stored in the TOML files as a table
//! path (`[vm]` / `cpus = 2`).

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
}

/// A default value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// For [`Kind::Bool`].
    Bool(bool),
    /// For [`Kind::Int`].
    Int(i64),
    /// For [`Kind::Choice`].
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
];

/// The definition of `key`.
pub fn lookup(key: &str) -> Option<&'static Def> {
    REGISTRY.iter().find(|def| def.key == key)
}
