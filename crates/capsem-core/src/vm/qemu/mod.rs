//! The QEMU `microvm` backend.
//!
//! QEMU runs with no default devices and no NIC; the guest sees a read-only
//! virtio disk, one virtio-serial port (the channel), virtio-rng and a
//! serial console. QEMU opens no file of the host by name: the verified
//! assets, the channel and the console are file descriptors capsem hands
//! it ([`args`]). It runs under its seccomp sandbox, with an empty
//! environment, in its own process group (so a terminal's Ctrl-C reaches
//! the guest through capsem rather than killing QEMU), as an unprivileged
//! uid of its own when capsem is root, and it dies with the thread that
//! started it ([`process`]).

pub mod args;
mod process;
pub mod qmp;

use std::path::{Path, PathBuf};

use super::backend::{Backend, VmConfig, VmError, VmHandle};
use crate::env;

pub use args::{CHANNEL_PORT, KERNEL_CMDLINE, boot_args, machine_args};

/// QEMU's name on `PATH`.
const QEMU_BINARY: &str = "qemu-system-x86_64";

/// Runs VMs with QEMU.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    binary: PathBuf,
}

impl QemuBackend {
    /// Finds QEMU: `$CAPSEM_QEMU`, else `qemu-system-x86_64` on `PATH`.
    pub fn locate() -> Result<Self, VmError> {
        let wanted = env::path_var(env::CAPSEM_QEMU).unwrap_or_else(|| PathBuf::from(QEMU_BINARY));
        let found = if wanted.components().count() > 1 {
            wanted.is_file().then(|| wanted.clone())
        } else {
            find_in_path(&wanted)
        };
        found
            .map(|binary| QemuBackend { binary })
            .ok_or_else(|| VmError::QemuNotFound {
                binary: wanted.display().to_string(),
            })
    }
}

fn find_in_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

impl Backend for QemuBackend {
    fn launch(&self, config: VmConfig) -> Result<VmHandle, VmError> {
        process::launch(&self.binary, config).map_err(|source| VmError::Spawn {
            binary: self.binary.display().to_string(),
            source,
        })
    }

    /// The binary's path, size and modification time (an upgrade of QEMU
    /// replaces the file), and a hash of the device line capsem gives it
    /// (the kernel command line aside: `lpj` follows the host's clock).
    fn identity(&self) -> std::io::Result<String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&self.binary)?;
        Ok(format!(
            "{}:{}:{}.{}:{}",
            self.binary.display(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
            args::device_line_hash()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_qemu_names_the_package() {
        let err = VmError::QemuNotFound {
            binary: "/nope/qemu".into(),
        };
        assert!(err.to_string().contains("qemu-system-x86"));
    }
}
