//! The small interface a virtual machine monitor implements.
//!
//! QEMU ([`super::qemu`]) is the one backend today; a native rust-vmm KVM
//! backend for hosts with hardware virtualization would be a sibling. Tests
//! use a fake guest behind the same trait.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::sync::watch;

use super::accel::Accel;
use crate::assets::VerifiedAssets;

/// Everything a backend needs to start one VM. The VM gets host resources
/// only as these open descriptors, never as paths to open.
#[derive(Debug)]
pub struct VmConfig {
    /// A name for process listings (`capsem-SESSION`).
    pub name: String,
    /// Verified kernel, initramfs and rootfs, open.
    pub assets: VerifiedAssets,
    /// KVM or TCG.
    pub accel: Accel,
    /// vCPUs.
    pub cpus: u32,
    /// Guest RAM.
    pub memory_mib: u32,
    /// How the guest sees its root filesystem.
    pub root: GuestRoot,
    /// A named sandbox's own disk (ext4, read-write), mounted at `/root`.
    pub home_disk: Option<DiskFiles>,
    /// The VM's end of the channel socket pair.
    pub channel: OwnedFd,
    /// The VM's end of the console socket pair; the host reads the other.
    pub console: OwnedFd,
    /// The VM's end of a socket pair for the monitor's control protocol
    /// (QMP), when the host is to snapshot the VM.
    pub control: Option<OwnedFd>,
    /// A snapshot to resume instead of booting: the VM starts where the
    /// snapshot was taken.
    pub incoming: Option<File>,
    /// Where the monitor's own stdout and stderr go.
    pub monitor_log: File,
}

impl VmConfig {
    /// The same VM again, every descriptor duplicated: what a suspended VM
    /// is resumed with. Neither the monitor's control socket nor a
    /// snapshot to resume is copied; each start brings its own.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(VmConfig {
            name: self.name.clone(),
            assets: self.assets.try_clone()?,
            accel: self.accel,
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            root: self.root,
            home_disk: self
                .home_disk
                .as_ref()
                .map(DiskFiles::try_clone)
                .transpose()?,
            channel: self.channel.try_clone()?,
            console: self.console.try_clone()?,
            control: None,
            incoming: None,
            monitor_log: self.monitor_log.try_clone()?,
        })
    }
}

/// A writable disk image, open twice: QEMU opens an image read-only
/// before it opens it read-write, and takes from its descriptor set the
/// descriptor whose access mode matches each open.
#[derive(Debug)]
pub struct DiskFiles {
    /// Open read-write.
    pub read_write: File,
    /// Open read-only.
    pub read_only: File,
}

impl DiskFiles {
    /// Opens the image at `path` both ways.
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        Ok(DiskFiles {
            read_write: File::options().read(true).write(true).open(path)?,
            read_only: File::open(path)?,
        })
    }

    /// The same descriptors, duplicated.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(DiskFiles {
            read_write: self.read_write.try_clone()?,
            read_only: self.read_only.try_clone()?,
        })
    }
}

/// How the guest sees the read-only image (`guest.root`): under an overlay
/// whose writable layer is memory, or as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GuestRoot {
    /// Writable for the session; nothing reaches the image.
    #[default]
    Overlay,
    /// Read-only, as the image is.
    ReadOnly,
}

impl GuestRoot {
    /// The `capsem_root=` value the agent reads.
    pub fn name(self) -> &'static str {
        match self {
            GuestRoot::Overlay => "overlay",
            GuestRoot::ReadOnly => "read-only",
        }
    }
}

/// How the VM process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The monitor exited with this code (0 after a guest power-off).
    Code(i32),
    /// The monitor was killed by this signal.
    Signal(i32),
}

/// A backend could not start a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// QEMU is not installed or not where `CAPSEM_QEMU` says.
    #[error("QEMU was not found ({binary}): install the Debian package qemu-system-x86")]
    QemuNotFound {
        /// What was looked for.
        binary: String,
    },
    /// The monitor process could not be started.
    #[error("starting {binary}: {source}")]
    Spawn {
        /// The program.
        binary: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Starts VMs.
pub trait Backend: Send + Sync {
    /// Starts a VM; returns once the monitor process runs.
    fn launch(&self, config: VmConfig) -> Result<VmHandle, VmError>;

    /// What identifies this monitor's build, for keying its snapshots: a
    /// snapshot is only resumed by the build that took it.
    fn identity(&self) -> std::io::Result<String>;
}

/// A running VM. Dropping the handle kills the VM.
pub struct VmHandle {
    pid: Option<u32>,
    exit: watch::Receiver<Option<VmExit>>,
    kill: Arc<dyn Fn() + Send + Sync>,
}

impl VmHandle {
    /// Wraps a started VM. `exit` is set once when it ends; `kill` stops it
    /// and must be safe to call at any time, including after it ended.
    pub fn new(
        pid: Option<u32>,
        exit: watch::Receiver<Option<VmExit>>,
        kill: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        VmHandle { pid, exit, kill }
    }

    /// The monitor's process id, when it is a process.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Waits until the VM has ended; any number of tasks may wait.
    pub async fn wait(&self) -> VmExit {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(exit) => exit.expect("checked by wait_for"),
            // The watcher vanished without a word: treat it as killed.
            Err(_) => VmExit::Signal(9),
        }
    }

    /// How it ended, if it has.
    pub fn try_exit(&self) -> Option<VmExit> {
        *self.exit.borrow()
    }

    /// Kills the VM now.
    pub fn kill(&self) {
        (self.kill)();
    }
}

impl Drop for VmHandle {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            self.kill();
        }
    }
}
