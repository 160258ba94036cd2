//! A running VM as the sandbox sees it: the monitor process, the copy of
//! its serial console into the session's boot log, and for a named
//! sandbox what suspending and resuming it take.
//!
//! A suspend writes the VM's RAM and device state to a file (QMP
//! `migrate`) and ends QEMU; a resume starts QEMU again on that file with
//! the same descriptors. The host keeps its own copies of the VM's ends of
//! the channel and console socket pairs meanwhile, so neither closes: the
//! host's side of the channel (its multiplexer, every command's stream, the
//! network's connections) simply waits, and carries on where it was once
//! the guest runs again. Waiters of [`RunningVm::wait`] see no end while
//! the VM is suspended.

use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::vm::qemu::qmp::{self, Qmp, QmpError};
use crate::vm::{Backend, VmConfig, VmError, VmExit, VmHandle};

/// Most bytes of console output kept per session. The console is the
/// guest's to write, so it must not be able to fill the host's disk.
pub const BOOT_LOG_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// How long the console copy may take to catch up once the VM is gone.
const CONSOLE_DRAIN: Duration = Duration::from_secs(1);

/// The monitor and its console copy.
pub struct RunningVm {
    current: watch::Sender<Current>,
    console: Mutex<Option<JoinHandle<()>>>,
    /// What a resume starts the VM with; `None` if it is never suspended.
    relaunch: Mutex<Option<Relaunch>>,
}

/// Where the VM is.
#[derive(Clone)]
enum Current {
    /// Its `start`th monitor process runs it.
    Running { start: u64, handle: Arc<VmHandle> },
    /// Its state is in a file; no process runs it.
    Suspended { start: u64 },
    /// It ended while suspended (stopped or killed).
    Gone(VmExit),
}

/// How a suspendable VM is started again.
pub struct Relaunch {
    /// The monitor.
    pub backend: Arc<dyn Backend>,
    /// The VM's descriptors, duplicated ([`VmConfig::try_clone`]).
    pub config: VmConfig,
    /// The running monitor's QMP socket; `None` while a suspend uses it.
    pub control: Option<Control>,
}

/// The host's end of a monitor's QMP socket.
pub enum Control {
    /// Not yet spoken on: QEMU's greeting waits in it.
    Socket(StdUnixStream),
    /// Past the greeting.
    Qmp(Qmp),
}

impl Control {
    fn connect(self) -> Result<Qmp, QmpError> {
        match self {
            Control::Socket(socket) => Qmp::connect(socket, qmp::REPLY_TIMEOUT),
            Control::Qmp(qmp) => Ok(qmp),
        }
    }
}

/// A suspend or resume failed; the VM is where it was.
#[derive(Debug, thiserror::Error)]
pub enum SuspendError {
    /// This VM keeps nothing to resume with (a one-shot run's).
    #[error("only a named sandbox can be suspended")]
    NotSuspendable,
    /// It is suspended already, or not suspended.
    #[error("the sandbox is {0}")]
    Wrong(&'static str),
    /// The guest was not reading its channel.
    #[error(transparent)]
    NotDrained(#[from] crate::channel::NotDrained),
    /// The monitor failed to save or load the VM.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// The monitor could not be started again.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A descriptor could not be copied.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

impl RunningVm {
    /// Pairs a started VM with the copy of its console into `boot_log`.
    pub fn new(handle: VmHandle, console: StdUnixStream, boot_log: File) -> std::io::Result<Self> {
        console.set_nonblocking(true)?;
        let console = tokio::net::UnixStream::from_std(console)?;
        let current = Current::Running {
            start: 0,
            handle: Arc::new(handle),
        };
        Ok(RunningVm {
            current: watch::Sender::new(current),
            console: Mutex::new(Some(tokio::spawn(copy_console(console, boot_log)))),
            relaunch: Mutex::new(None),
        })
    }

    /// Makes the VM suspendable with `relaunch`.
    pub fn suspendable(self, relaunch: Relaunch) -> Self {
        *lock(&self.relaunch) = Some(relaunch);
        self
    }

    /// Waits until the VM has ended for good (a suspend is not an end) and
    /// its console output is on disk, so the boot log's tail is complete
    /// when an error quotes it. Several tasks may wait; the first one out
    /// drains the console.
    pub async fn wait(&self) -> VmExit {
        let mut current = self.current.subscribe();
        let exit = loop {
            let now = current.borrow_and_update().clone();
            match now {
                Current::Running { start, handle } => {
                    let exit = handle.wait().await;
                    let still = matches!(&*self.current.borrow(),
                        Current::Running { start: s, .. } if *s == start);
                    if still {
                        break exit;
                    }
                }
                Current::Suspended { .. } => {
                    if current.changed().await.is_err() {
                        break VmExit::Signal(9);
                    }
                }
                Current::Gone(exit) => break exit,
            }
        };
        // The host's copies of the VM's sockets close, and the console
        // copy sees its end.
        lock(&self.relaunch).take();
        let copy = lock(&self.console).take();
        if let Some(copy) = copy {
            let _ = tokio::time::timeout(CONSOLE_DRAIN, copy).await;
        }
        exit
    }

    /// How the VM ended, if it has for good.
    pub fn try_exit(&self) -> Option<VmExit> {
        match &*self.current.borrow() {
            Current::Running { handle, .. } => handle.try_exit(),
            Current::Suspended { .. } => None,
            Current::Gone(exit) => Some(*exit),
        }
    }

    /// The monitor's process id; `None` while suspended.
    pub fn pid(&self) -> Option<u32> {
        match &*self.current.borrow() {
            Current::Running { handle, .. } => handle.pid(),
            _ => None,
        }
    }

    /// Whether the VM is suspended.
    pub fn is_suspended(&self) -> bool {
        matches!(&*self.current.borrow(), Current::Suspended { .. })
    }

    /// Kills the VM now; a suspended one is discarded.
    pub fn kill(&self) {
        self.current.send_modify(|current| match current {
            Current::Running { handle, .. } => handle.kill(),
            Current::Suspended { .. } => *current = Current::Gone(VmExit::Signal(9)),
            Current::Gone(_) => {}
        });
    }

    /// Writes the VM's state to `state` within `limit` and ends its
    /// monitor. A failed save leaves the VM running. The caller runs one
    /// suspend or resume at a time.
    pub async fn suspend(&self, state: File, limit: Duration) -> Result<(), SuspendError> {
        let Current::Running { start, handle } = self.current.borrow().clone() else {
            return Err(SuspendError::Wrong("not running"));
        };
        let control = self.take_control()?;
        let (control, saved) = tokio::task::spawn_blocking(move || match control.connect() {
            Ok(mut qmp) => {
                let saved = qmp.save(&state, limit);
                (Some(Control::Qmp(qmp)), saved)
            }
            Err(e) => (None, Err(e)),
        })
        .await
        .map_err(|e| io("saving the VM", std::io::Error::other(e)))?;
        if let Some(relaunch) = lock(&self.relaunch).as_mut() {
            relaunch.control = control;
        }
        saved?;
        // Suspended before the monitor ends, so no waiter takes its end
        // for the VM's.
        self.current.send_replace(Current::Suspended { start });
        handle.kill();
        handle.wait().await;
        Ok(())
    }

    /// Starts the monitor again on `state` and waits, within `limit`,
    /// until the VM runs. A failed resume leaves it suspended. The caller
    /// runs one suspend or resume at a time.
    pub async fn resume(&self, state: File, limit: Duration) -> Result<(), SuspendError> {
        let Current::Suspended { start } = *self.current.borrow() else {
            return Err(SuspendError::Wrong("not suspended"));
        };
        let (host, vm) = StdUnixStream::pair().map_err(|e| io("a socket pair", e))?;
        let (backend, mut config) = {
            let relaunch = lock(&self.relaunch);
            let relaunch = relaunch.as_ref().ok_or(SuspendError::NotSuspendable)?;
            let config = relaunch.config.try_clone();
            (
                relaunch.backend.clone(),
                config.map_err(|e| io("the VM's descriptors", e))?,
            )
        };
        config.control = Some(vm.into());
        config.incoming = Some(state);
        let handle = backend.launch(config)?;
        let running = tokio::task::spawn_blocking(move || {
            let mut qmp = Qmp::connect(host, qmp::REPLY_TIMEOUT)?;
            qmp.wait_running(limit).map(|()| qmp)
        })
        .await
        .map_err(|e| io("resuming the VM", std::io::Error::other(e)));
        let qmp = match running.and_then(|r| r.map_err(SuspendError::from)) {
            Ok(qmp) => qmp,
            Err(e) => {
                handle.kill();
                handle.wait().await;
                return Err(e);
            }
        };
        if let Some(relaunch) = lock(&self.relaunch).as_mut() {
            relaunch.control = Some(Control::Qmp(qmp));
        }
        self.current.send_replace(Current::Running {
            start: start + 1,
            handle: Arc::new(handle),
        });
        Ok(())
    }

    /// The running monitor's QMP socket, taken for one conversation.
    fn take_control(&self) -> Result<Control, SuspendError> {
        let mut relaunch = lock(&self.relaunch);
        let relaunch = relaunch.as_mut().ok_or(SuspendError::NotSuspendable)?;
        relaunch
            .control
            .take()
            .ok_or(SuspendError::Wrong("being suspended"))
    }
}

fn io(what: &'static str, source: std::io::Error) -> SuspendError {
    SuspendError::Io { what, source }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
