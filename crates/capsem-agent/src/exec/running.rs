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

/// The running commands, and signals that came before their command.
#[derive(Clone, Default)]
pub struct Running {
    commands: Arc<Mutex<Commands>>,
}

#[derive(Default)]
struct Commands {
    running: HashMap<u32, Entry>,
    /// The highest exec id started so far: the host numbers them upwards,
    /// so a signal for a higher one is for a command still starting (its
    /// request and the signal travel on different streams).
    newest: u32,
    /// The last signal for each command still starting (a few at most).
    early: HashMap<u32, u8>,
}

/// Commands still starting whose early signals are kept.
const MAX_EARLY: usize = 8;

impl Running {
    /// Registers command `exec`, and gives it a signal that came first.
    pub fn insert(&self, exec: u32, group: Pid, terminal: Option<OwnedFd>) {
        let mut commands = self.lock();
        commands.running.insert(exec, Entry { group, terminal });
        commands.newest = commands.newest.max(exec);
        if let Some(signal) = commands.early.remove(&exec) {
            send(group, signal);
        }
    }

    /// Forgets command `exec`.
    pub fn remove(&self, exec: u32) {
        self.lock().running.remove(&exec);
    }

    /// Sends `signal` to the process group of command `exec`; a command
    /// still starting gets it as soon as it runs (a Ctrl-C right after
    /// the request is not lost).
    pub fn signal(&self, exec: u32, signal: u8) {
        let mut commands = self.lock();
        if let Some(group) = commands.running.get(&exec).map(|e| e.group) {
            return send(group, signal);
        }
        let starting = exec > commands.newest;
        if starting && (commands.early.len() < MAX_EARLY || commands.early.contains_key(&exec)) {
            commands.early.insert(exec, signal);
        }
    }

    /// Resizes the terminal of command `exec`; the kernel tells its
    /// foreground process group with `SIGWINCH`.
    pub fn resize(&self, exec: u32, size: TtySize) {
        let commands = self.lock();
        let terminal = commands
            .running
            .get(&exec)
            .and_then(|e| e.terminal.as_ref());
        let Some(terminal) = terminal else {
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

    fn lock(&self) -> MutexGuard<'_, Commands> {
        self.commands.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Signals a process group (which may be gone already: not an error).
fn send(group: Pid, signal: u8) {
    match Signal::try_from(i32::from(signal)) {
        Ok(sig) => {
            let _ = killpg(group, sig);
        }
        Err(_) => tracing::warn!("ignoring unknown signal {signal}"),
    }
}
