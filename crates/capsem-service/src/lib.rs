//! Sandboxes that live on: the capsem service and its supervisors.
//!
//! ```text
//! capsem CLI ──HTTP/JSON + WebSocket──► service (capsem.sock; one per user)
//!                                         │  registry: $CAPSEM_HOME/sandboxes/NAME/
//!                                         └─► supervisor per running sandbox
//!                                               (its own process: VM, channel,
//!                                               network proxy; supervisor.sock)
//! browser ──HTTP + WebSocket on 127.0.0.1:PORT──► the same API behind
//!                                         the UI's token and Host/Origin checks
//! ```
//!
//! The service is a router: it creates a sandbox's directory and disk,
//! starts its supervisor as a process of its own session, and forwards
//! requests to it. Supervisors hold the [`capsem_core::Live`] VM; they do
//! not depend on the service, so a service killed with SIGKILL leaves
//! every sandbox running, and the next service finds them on disk. A dead
//! supervisor takes its QEMU with it (the death signal of the thread that
//! started it). Both sockets accept only the owner's uid.

pub mod api;
pub mod archive;
pub mod bridge;
pub mod client;
pub mod layout;
pub mod lock;
pub mod logs;
pub mod name;
pub mod net;
pub mod peer;
pub mod service;
pub mod sessions;
pub mod settings;
pub mod supervisor;
pub mod terminals;
pub mod ui;

pub use client::{Client, ClientError};
pub use layout::SandboxDir;
