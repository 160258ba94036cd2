//! Ending the VM.
//!
//! The guest has no ACPI, so "power off" is a reset: the kernel runs with
//! `reboot=t` (triple fault, no firmware needed) and QEMU with `-no-reboot`,
//! which turns the reset into a clean QEMU exit. The root filesystem is
//! read-only and the scratch space tmpfs; only a named sandbox's disk at
//! `/root` holds data, so it is synced and remounted read-only (which
//! leaves its journal clean) once every other process is gone.

use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long the guest's processes may take to die before the disk is
/// remounted anyway (a failed remount still leaves a journalled disk).
const SETTLE: Duration = Duration::from_secs(1);

/// Stops the VM. Never returns.
pub fn off() -> ! {
    settle_disk();
    // If the reset itself failed there is nothing left to do; the host's
    // timeout reaps the VM.
    let err = reboot(RebootMode::RB_AUTOBOOT);
    eprintln!("capsem-agent: reboot failed: {err:?}");
    loop {
        std::thread::park();
    }
}

/// Kills every other process, then makes `/root` read-only when it is a
/// disk. A busy file system (a process not yet reaped) is retried.
fn settle_disk() {
    if !crate::init::home_is_disk() {
        return;
    }
    // Kills every process but this one.
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    nix::unistd::sync();
    let deadline = Instant::now() + SETTLE;
    loop {
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        match mount(None::<&str>, "/root", None::<&str>, flags, None::<&str>) {
            Ok(()) => return,
            Err(_) if Instant::now() < deadline => {
                // Reap what was killed; children of PID 1 stay zombies
                // (holding their files) until waited for.
                while nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
                    .is_ok_and(|s| s != nix::sys::wait::WaitStatus::StillAlive)
                {}
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                eprintln!("capsem-agent: /root stays writable at power-off: {e}");
                return;
            }
        }
    }
}
