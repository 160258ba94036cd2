//! capsem-agent: PID 1 of a Capsem guest.
//!
//! The kernel starts it from the initramfs as `/init`. It mounts the
//! read-only root filesystem with tmpfs scratch space ([`init`]), switches
//! into it, then serves the host over the virtio-serial channel ([`serve`]):
//! it runs the commands the host asks for ([`exec`]), reaps every process
//! ([`reap`]), and powers the VM off when told or when the host goes away
//! ([`power`]).
//!
//! Nothing here trusts the guest's own processes, and nothing depends on a
//! shell script: a panic or error ends in [`power::off`], so the VM never
//! hangs with the host waiting.

mod archive;
mod exec;
mod files;
mod identity;
mod init;
mod net;
mod pipe;
mod port;
mod power;
mod reap;
mod serve;
mod workspace;

use std::time::Duration;

fn main() {
    let init_started = boottime();
    std::panic::set_hook(Box::new(|info| {
        // stderr is the serial console, which the host keeps as boot.log.
        eprintln!("capsem-agent: panic: {info}");
        power::off();
    }));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .init();
    if std::process::id() != 1 {
        eprintln!("capsem-agent: this is the init of a Capsem VM, not a program to run by hand");
        std::process::exit(2);
    }
    if let Err(e) = run(init_started) {
        tracing::error!("{e:#}");
    }
    power::off();
}

fn run(init_started: Duration) -> anyhow::Result<()> {
    init::protect_self()?;
    init::setup()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve::serve(init_started))
}

/// Time since the kernel started (`CLOCK_BOOTTIME`).
fn boottime() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_default()
}
