//! A running VM as the sandbox sees it: the monitor process and the copy
//! of its serial console into the session's boot log.

use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use crate::vm::{VmExit, VmHandle};

/// Most bytes of console output kept per session. The console is the
/// guest's to write, so it must not be able to fill the host's disk.
pub const BOOT_LOG_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// How long the console copy may take to catch up once the VM is gone.
const CONSOLE_DRAIN: Duration = Duration::from_secs(1);

/// The monitor and its console copy.
pub struct RunningVm {
    handle: VmHandle,
    console: Mutex<Option<JoinHandle<()>>>,
}

impl RunningVm {
    /// Pairs a started VM with the copy of its console into `boot_log`.
    pub fn new(handle: VmHandle, console: StdUnixStream, boot_log: File) -> std::io::Result<Self> {
        console.set_nonblocking(true)?;
        let console = tokio::net::UnixStream::from_std(console)?;
        Ok(RunningVm {
            handle,
            console: Mutex::new(Some(tokio::spawn(copy_console(console, boot_log)))),
        })
    }

    /// Waits until the VM has ended and its console output is on disk, so
    /// the boot log's tail is complete when an error quotes it. Several
    /// tasks may wait; the first one out drains the console.
    pub async fn wait(&self) -> VmExit {
        let exit = self.handle.wait().await;
        let copy = self
            .console
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(copy) = copy {
            let _ = tokio::time::timeout(CONSOLE_DRAIN, copy).await;
        }
        exit
    }

    /// How the VM ended, if it has.
    pub fn try_exit(&self) -> Option<VmExit> {
        self.handle.try_exit()
    }

    /// The monitor's process id.
    pub fn pid(&self) -> Option<u32> {
        self.handle.pid()
    }

    /// Kills the VM now.
    pub fn kill(&self) {
        self.handle.kill();
    }
}

/// Appends the console to `log` until the VM closes it, keeping at most
/// [`BOOT_LOG_MAX_BYTES`] and draining the rest (a console nobody reads
/// would stall the guest).
async fn copy_console(mut console: tokio::net::UnixStream, mut log: File) {
    let mut kept = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match console.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let room = BOOT_LOG_MAX_BYTES.saturating_sub(kept);
        let take = (n as u64).min(room) as usize;
        if take > 0 && log.write_all(&buf[..take]).is_err() {
            return;
        }
        kept += take as u64;
        if take < n && room > 0 {
            let _ = writeln!(
                log,
                "\n[capsem: boot log truncated at {BOOT_LOG_MAX_BYTES} bytes]"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_boot_log_is_capped_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot.log");
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let copy = tokio::spawn(copy_console(
            b,
            crate::fsutil::create_private(&path).unwrap(),
        ));
        let mut a = a;
        let chunk = vec![b'x'; 1024 * 1024];
        for _ in 0..6 {
            a.write_all(&chunk).await.unwrap();
        }
        drop(a);
        copy.await.unwrap();
        let log = std::fs::read(&path).unwrap();
        let marker = b"\n[capsem: boot log truncated at 4194304 bytes]\n";
        assert_eq!(log.len() as u64, BOOT_LOG_MAX_BYTES + marker.len() as u64);
        assert!(log.ends_with(marker));
    }
}
