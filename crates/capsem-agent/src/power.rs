//! Ending the VM.
//!
//! The guest has no ACPI, so "power off" is a reset: the kernel runs with
//! `reboot=t` (triple fault, no firmware needed) and QEMU with `-no-reboot`,
//! which turns the reset into a clean QEMU exit. Nothing needs syncing: the
//! root filesystem is read-only and everything writable is tmpfs.

use nix::sys::reboot::{RebootMode, reboot};

/// Stops the VM. Never returns.
pub fn off() -> ! {
    // If the reset itself failed there is nothing left to do; the host's
    // timeout reaps the VM.
    let err = reboot(RebootMode::RB_AUTOBOOT);
    eprintln!("capsem-agent: reboot failed: {err:?}");
    loop {
        std::thread::park();
    }
}
