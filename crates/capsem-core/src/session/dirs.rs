//! A session's directory.
//!
//! Every VM is a session with a short random id. Its directory
//! (`~/.capsem/sessions/ID/`, private to the user) keeps the boot log,
//! QEMU's log and the event database. Nothing of a session needs a path at
//! runtime: the VM's channel and console are socket pairs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rand::RngExt;

use crate::fsutil::create_private_dir;

/// Hex digits in a session id.
const ID_LEN: usize = 8;

/// The directory of one run.
#[derive(Debug, Clone)]
pub struct Session {
    id: String,
    dir: PathBuf,
}

/// A directory of a session could not be made.
#[derive(Debug, thiserror::Error)]
#[error("creating session directory {path}: {source}")]
pub struct SessionError {
    /// The directory.
    pub path: PathBuf,
    /// The cause.
    pub source: io::Error,
}

impl Session {
    /// Creates a session under `home/sessions`.
    pub fn create(home: &Path) -> Result<Session, SessionError> {
        let sessions = home.join("sessions");
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| SessionError { path, source }
        };
        create_private_dir(&sessions).map_err(err(&sessions))?;
        loop {
            let id = new_id();
            let dir = sessions.join(&id);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(err(&dir)(e)),
            }
            create_private_dir(&dir).map_err(err(&dir))?;
            return Ok(Session { id, dir });
        }
    }

    /// The directory of the existing session `id` under `home`; `None`
    /// for anything that is not a session id (nothing like `..` reaches
    /// a path).
    pub fn existing(home: &Path, id: &str) -> Option<Session> {
        let well_formed = id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit());
        let dir = home.join("sessions").join(id);
        (well_formed && dir.is_dir()).then(|| Session {
            id: id.to_owned(),
            dir,
        })
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The record directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The guest's serial console output.
    pub fn boot_log(&self) -> PathBuf {
        self.dir.join("boot.log")
    }

    /// The VM monitor's own output.
    pub fn monitor_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }

    /// The session's event database.
    pub fn events_db(&self) -> PathBuf {
        self.dir.join(super::events::EVENTS_FILE)
    }
}

fn new_id() -> String {
    let value: u64 = rand::rng().random();
    format!("{value:016x}")[..ID_LEN].to_owned()
}

/// The last `lines` lines of a log the guest wrote, made safe to print:
/// control characters (terminal escape sequences included) are shown as
/// escapes ([`crate::text::visible`]).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| crate::text::visible(line).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn sessions_get_private_dirs_and_unique_ids() {
        let home = tempfile::tempdir().unwrap();
        let session = Session::create(home.path()).unwrap();
        assert_eq!(session.id().len(), ID_LEN);
        let mode = fs::metadata(session.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let other = Session::create(home.path()).unwrap();
        assert_ne!(other.id(), session.id());
    }

    #[test]
    fn log_tail_is_short_and_escape_free() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("boot.log");
        let mut text = String::new();
        for i in 0..30 {
            text.push_str(&format!("line {i}\n"));
        }
        text.push_str("evil \x1b]0;pwned\x07 end\r\n");
        fs::write(&log, text).unwrap();
        let tail = log_tail(&log, 20);
        assert_eq!(tail.lines().count(), 20);
        assert!(tail.starts_with("line 11"));
        assert!(!tail.contains('\x1b') && !tail.contains('\x07'));
        assert!(tail.ends_with("evil \\x1b]0;pwned\\x07 end"), "{tail}");
    }
}
