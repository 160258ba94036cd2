//! Starting QEMU: descriptors in place, privileges dropped, tied to us.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use rand::RngExt;
use tokio::sync::watch;

use super::args::{Fd, Shape, vm_args};
use crate::vm::accel::Accel;
use crate::vm::backend::{VmConfig, VmExit, VmHandle};

/// QEMU's uid when capsem runs as root: one of its own per VM, in a range
/// no distribution hands out, so no other process (another VM's QEMU
/// included) shares it.
const SANDBOX_UIDS: std::ops::Range<u32> = 1_000_000_000..2_000_000_000;
/// Most descriptors QEMU inherits.
const MAX_FDS: usize = 10;

/// Starts QEMU for `config`.
pub fn launch(binary: &Path, config: VmConfig) -> std::io::Result<VmHandle> {
    let mut cmd = Command::new(binary);
    let shape = Shape {
        accel: config.accel,
        root: config.root,
        cpus: config.cpus,
        memory_mib: config.memory_mib,
        home_disk: config.home_disk.is_some(),
        control: config.control.is_some(),
        incoming: config.incoming.is_some(),
    };
    cmd.args(vm_args(&shape, &config.name))
        .env_clear()
        .stdin(Stdio::null())
        .stdout(config.monitor_log.try_clone()?)
        .stderr(config.monitor_log.try_clone()?)
        .process_group(0);
    if nix::unistd::geteuid().is_root() {
        // std drops supplementary groups, then sets gid and uid, in the
        // child before our pre_exec hook runs.
        let uid = rand::rng().random_range(SANDBOX_UIDS);
        cmd.uid(uid).gid(sandbox_gid(config.accel, uid));
    }
    let mut map: Vec<(RawFd, RawFd)> = [
        (config.assets.kernel.file.as_raw_fd(), Fd::Kernel),
        (config.assets.initramfs.file.as_raw_fd(), Fd::Initramfs),
        (config.assets.rootfs.file.as_raw_fd(), Fd::Rootfs),
        (config.channel.as_raw_fd(), Fd::Channel),
        (config.console.as_raw_fd(), Fd::Console),
    ]
    .map(|(from, to)| (from, to as RawFd))
    .into();
    if let Some(disk) = &config.home_disk {
        map.push((disk.read_write.as_raw_fd(), Fd::HomeDisk as RawFd));
        map.push((disk.read_only.as_raw_fd(), Fd::HomeDiskReadOnly as RawFd));
    }
    if let Some(control) = &config.control {
        map.push((control.as_raw_fd(), Fd::Control as RawFd));
    }
    if let Some(incoming) = &config.incoming {
        map.push((incoming.as_raw_fd(), Fd::Incoming as RawFd));
    }
    let parent = std::process::id();
    // SAFETY: runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: fcntl(2), dup2(2), prctl(2) and
    // getppid(2) are plain system calls that neither allocate nor lock, and
    // every error is made from an errno code (`from_raw_os_error`, nix's
    // `Errno` conversion), which allocates nothing either. The descriptors
    // in `map` stay open in the parent until spawn returns, because
    // `config` outlives the spawn below.
    unsafe {
        cmd.pre_exec(move || {
            place_fds(&map)?;
            // Set after the uid change, which would clear it.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The parent may have died before the death signal was armed.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    spawn_supervised(cmd, config)
}

/// The group QEMU runs with when it drops root: the group owning
/// `/dev/kvm` when it needs KVM, else one as private as its uid.
fn sandbox_gid(accel: Accel, uid: u32) -> u32 {
    match accel {
        Accel::Kvm => fs::metadata("/dev/kvm").map_or(uid, |m| m.gid()),
        Accel::Tcg => uid,
    }
}

/// Moves each descriptor to its fixed number, without CLOEXEC. Two passes,
/// through copies above the targets, so that no move overwrites a source
/// still to be moved. Only called between fork and exec, so it allocates
/// nothing: `map` is built before the fork.
fn place_fds(map: &[(RawFd, RawFd)]) -> std::io::Result<()> {
    let mut copies = [0; MAX_FDS];
    if map.len() > MAX_FDS {
        return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
    }
    for (copy, (from, _)) in copies.iter_mut().zip(map) {
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor the parent keeps
        // open; it allocates a new descriptor and touches no memory.
        *copy = unsafe { libc::fcntl(*from, libc::F_DUPFD_CLOEXEC, 64) };
        if *copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for (copy, (_, to)) in copies.iter().zip(map) {
        // SAFETY: dup2 onto a number this process does not otherwise use
        // (stdio is 0-2; our copies are at 64 and above); it clears
        // CLOEXEC on the target, so the descriptor survives exec.
        if unsafe { libc::dup2(*copy, *to) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Spawns `cmd` from a thread that lives exactly as long as the child.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
/// so forking from a short-lived worker thread would kill the VM early.
/// `config` (whose descriptors the child inherits) is dropped once QEMU
/// runs: QEMU holds its own copies.
fn spawn_supervised(mut cmd: Command, config: VmConfig) -> std::io::Result<VmHandle> {
    let (exit_tx, exit_rx) = watch::channel(None);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("vm-monitor".into())
        .spawn(move || {
            let spawned = cmd.spawn();
            drop(config);
            let mut child = match spawned {
                Ok(child) => child,
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            };
            let pidfd = rustix::process::Pid::from_raw(child.id() as i32)
                .ok_or_else(|| std::io::Error::other("invalid pid"))
                .and_then(|pid| {
                    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
                        .map_err(std::io::Error::from)
                });
            let _ = started_tx.send(pidfd.map(|fd| (child.id(), fd)));
            let exit = match child.wait() {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => VmExit::Code(code),
                    (None, Some(sig)) => VmExit::Signal(sig),
                    (None, None) => VmExit::Signal(9),
                },
                Err(_) => VmExit::Signal(9),
            };
            let _ = exit_tx.send(Some(exit));
        })?;
    let (pid, pidfd) = started_rx
        .recv()
        .map_err(|_| std::io::Error::other("the VM monitor thread died"))??;
    Ok(VmHandle::new(Some(pid), exit_rx, killer(pidfd)))
}

/// Kills through a pidfd, which cannot hit a recycled pid once the child
/// has been reaped.
fn killer(pidfd: OwnedFd) -> Arc<dyn Fn() + Send + Sync> {
    Arc::new(move || {
        let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
    })
}
