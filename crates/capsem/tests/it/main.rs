//! Integration tests: each boots real VMs from the built assets (under TCG
//! on hosts without hardware virtualization). One test binary, so the
//! assets are built once and the harness runs VMs in parallel.

mod agents;
mod cli;
mod doctor;
mod e2b;
mod errors;
mod exec;
mod hostile;
mod json;
mod kernel;
mod lifecycle;
mod mcp;
mod network;
mod registries;
mod sandboxes;
mod security;
mod sessions;
mod settings;
mod shell;
mod snapshot;
mod support;
mod suspend;
mod ui;
mod upstream;
mod workspace;
