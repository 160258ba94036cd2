//! The host terminal during a guest terminal session: raw mode, always
//! restored, and its size.
//!
//! Raw mode hands every key to the guest (Ctrl-C, Ctrl-Z, Ctrl-\ and Ctrl-D
//! become bytes its terminal turns into signals and end-of-file). The saved
//! settings are restored when the guard drops and, because a release build
//! aborts on panic without unwinding, from the panic hook too.

use std::io::{self, IsTerminal};
use std::sync::{Mutex, Once, PoisonError};

use capsem_proto::TtySize;
use rustix::termios::{self, OptionalActions, Termios};

/// The settings to restore, while raw mode is on.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);
static PANIC_HOOK: Once = Once::new();

/// Raw mode on stdin's terminal until dropped.
pub struct RawMode {
    _private: (),
}

impl RawMode {
    /// Puts stdin's terminal in raw mode.
    pub fn enter() -> io::Result<RawMode> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        *SAVED.lock().unwrap_or_else(PoisonError::into_inner) = Some(saved);
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw)?;
        Ok(RawMode { _private: () })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Restores the saved settings, once.
fn restore() {
    let saved = SAVED.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(saved) = saved {
        let _ = termios::tcsetattr(io::stdin(), OptionalActions::Now, &saved);
    }
}

/// Whether stdin is a terminal.
pub fn stdin_is_terminal() -> bool {
    io::stdin().is_terminal()
}

/// Whether stdout is a terminal.
pub fn stdout_is_terminal() -> bool {
    io::stdout().is_terminal()
}

/// Whether stderr is a terminal (where progress is worth showing).
pub fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}

/// The size of the terminal on stdout (else stdin), if there is one.
pub fn size() -> Option<TtySize> {
    let size = termios::tcgetwinsize(io::stdout())
        .or_else(|_| termios::tcgetwinsize(io::stdin()))
        .ok()?;
    (size.ws_row > 0 && size.ws_col > 0).then_some(TtySize {
        rows: size.ws_row,
        cols: size.ws_col,
    })
}
