//! The virtio-serial port that carries the host channel.
//!
//! There is no udev, so no `/dev/virtio-ports/NAME` link: the port is found
//! by its name in `/sys/class/virtio-ports/vport*/name`, and its device node
//! `/dev/vportNpM` comes from devtmpfs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use anyhow::{Context as _, Result, anyhow};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Name the host gives the channel port (`virtserialport,name=...`).
pub const CHANNEL_PORT: &str = "capsem.0";

/// Finds the device node of the port named `name`.
pub fn find(name: &str) -> Result<PathBuf> {
    let class = "/sys/class/virtio-ports";
    let entries = fs::read_dir(class).with_context(|| format!("listing {class}"))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {class}"))?;
        let port_name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim_end() == name {
            return Ok(PathBuf::from("/dev").join(entry.file_name()));
        }
    }
    Err(anyhow!("no virtio-serial port named {name} in {class}"))
}

/// A virtio-serial port opened non-blocking and driven by the tokio reactor.
pub struct Port {
    fd: AsyncFd<File>,
}

impl Port {
    /// Opens the port device.
    pub fn open(path: &PathBuf) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let fd =
            crate::pipe::register(file).with_context(|| format!("polling {}", path.display()))?;
        Ok(Port { fd })
    }
}

impl AsyncRead for Port {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| fd.get_ref().read(unfilled)) {
                Ok(result) => {
                    let n = result?;
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Port {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| fd.get_ref().write(data)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
