//! Whether a sandbox's supervisor (or the service) lives: it holds an
//! exclusive `flock` on its lock file for as long as its process exists,
//! so a supervisor killed with SIGKILL frees it at once and nothing stale
//! is left to clean up.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// A held lock; dropped, or at the process's end, it is free.
pub type Held = Flock<File>;

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// Takes the lock, waiting up to `wait` for a passing [`is_held`] probe;
/// `Ok(None)` when another process holds it.
pub fn take(path: &Path, wait: Duration) -> io::Result<Option<Held>> {
    let deadline = Instant::now() + wait;
    loop {
        match Flock::lock(open(path)?, FlockArg::LockExclusiveNonblock) {
            Ok(held) => return Ok(Some(held)),
            Err((_, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(e.into()),
        }
    }
}

/// Whether some process holds the lock now (a missing file: nobody).
pub fn is_held(path: &Path) -> bool {
    let Ok(file) = OpenOptions::new().read(true).open(path) else {
        return false;
    };
    matches!(
        Flock::lock(file, FlockArg::LockSharedNonblock),
        Err((_, Errno::EWOULDBLOCK))
    )
}
