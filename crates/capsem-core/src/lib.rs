//! capsem-core: the host side of Capsem.
//!
//! - [`ai`]: the AI CLIs' defaults written into each guest;
//! - [`assets`]: the pinned manifest and the check every boot starts with;
//! - [`vm`]: the accelerator choice and the VM backend (QEMU `microvm`);
//! - [`channel`]: handshake, multiplexing and command streams to the agent;
//! - [`settings`]: defaults < user file < locked corporate file;
//! - [`session`]: per-run directories and logs;
//! - [`sandbox`]: one run from start to a destroyed VM;
//! - [`workspace`]: the user's project in the guest, and its changes back.
//!
//! The guest is hostile: everything from it is bounded and validated (see
//! `capsem-proto`), its console output is sanitised before it reaches a
//! terminal, and the VM never outlives the process that started it.

#![deny(missing_docs)]

pub mod ai;
pub mod assets;
pub mod channel;
pub mod env;
pub mod fsutil;
pub mod net;
pub mod paths;
pub mod sandbox;
pub mod session;
pub mod settings;
pub mod text;
pub mod vm;
pub mod workspace;

pub use sandbox::{
    BootSpec, Booted, End, Live, Notice, Opened, Outcome, Phases, RunError, RunReport, RunRequest,
    Sandbox, WorkspaceSpec,
};
