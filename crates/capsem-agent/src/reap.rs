//! The one place that waits for child processes.
//!
//! As PID 1 the agent inherits every orphan, so it must reap all of them. A
//! single reaper calls `waitpid(-1)` on each `SIGCHLD` and hands the status of
//! the commands it started to their waiters; everything else is discarded.
//! Spawning holds the same lock as reaping, so a command that exits at once
//! is still known when its status arrives.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, PoisonError};

use capsem_proto::ExitStatus;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

type Waiters = Arc<Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>>;

/// Starts commands and delivers their exit status.
#[derive(Clone)]
pub struct Reaper {
    waiters: Waiters,
}

impl Reaper {
    /// Starts reaping. Must run inside the tokio runtime.
    pub fn start() -> io::Result<Self> {
        let mut sigchld = signal(SignalKind::child())?;
        let waiters = Waiters::default();
        let reaper = Reaper {
            waiters: waiters.clone(),
        };
        tokio::spawn(async move {
            loop {
                reap_all(&waiters);
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// Spawns `cmd`; the receiver yields its exit status.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<ExitStatus>)> {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(child.id() as i32, tx);
        Ok((child, rx))
    }
}

fn reap_all(waiters: &Waiters) {
    let mut waiters = waiters.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code as u8)),
            Ok(WaitStatus::Signaled(pid, sig, _core)) => (pid, ExitStatus::Signal(sig as u8)),
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        };
        if let Some(tx) = waiters.remove(&pid.as_raw()) {
            // The exec may have been abandoned; the status is then unwanted.
            let _ = tx.send(status);
        }
    }
}
