//! Running commands by exec id, so that signals and resizes from the
//! control stream reach them.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use capsem_proto::TtySize;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// One running command.
struct Entry {
    /// Its process group (the command is the group's leader).
    group: Pid,
    /// Its terminal, when it has one.
    terminal: Option<OwnedFd>,
}

/// The running commands.
#[derive(Clone, Default)]
pub struct Running {
    commands: Arc<Mutex<HashMap<u32, Entry>>>,
}

impl Running {
    /// Registers command `exec`.
    pub fn insert(&self, exec: u32, group: Pid, terminal: Option<OwnedFd>) {
        self.lock().insert(exec, Entry { group, terminal });
    }

    /// Forgets command `exec`.
    pub fn remove(&self, exec: u32) {
        self.lock().remove(&exec);
    }

    /// Sends `signal` to the process group of command `exec`, if it runs.
    pub fn signal(&self, exec: u32, signal: u8) {
        let Some(group) = self.lock().get(&exec).map(|e| e.group) else {
            return;
        };
        match Signal::try_from(i32::from(signal)) {
            // The group may be gone already; that is not an error.
            Ok(sig) => {
                let _ = killpg(group, sig);
            }
            Err(_) => tracing::warn!("ignoring unknown signal {signal}"),
        }
    }

    /// Resizes the terminal of command `exec`; the kernel tells its
    /// foreground process group with `SIGWINCH`.
    pub fn resize(&self, exec: u32, size: TtySize) {
        let commands = self.lock();
        let Some(terminal) = commands.get(&exec).and_then(|e| e.terminal.as_ref()) else {
            return;
        };
        let winsize = rustix::termios::Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        if let Err(e) = rustix::termios::tcsetwinsize(terminal, winsize) {
            tracing::warn!("resizing the terminal of command {exec}: {e}");
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Entry>> {
        self.commands.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
