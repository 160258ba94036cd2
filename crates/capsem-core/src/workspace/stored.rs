//! What a session keeps of its workspace, in `SESSION/workspace/`:
//! `mounted.json` (which project, since when), `changes.tar` (the guest's
//! upper layer, once exported) and `applied.jsonl` (each apply and
//! discard: what, how much, who).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::WorkspaceError;
use super::changes::Mounted;
use crate::fsutil::{create_private, create_private_dir, write_atomic};

/// The workspace records of one session.
#[derive(Debug, Clone)]
pub struct Stored {
    dir: PathBuf,
}

/// One line of `applied.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyRecord {
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// `apply` or `discard`.
    pub action: String,
    /// The user who accepted (their login name, or uid).
    pub user: String,
    /// Paths written or removed.
    pub paths: Vec<String>,
    /// Bytes written.
    pub bytes: u64,
}

impl Stored {
    /// The records of the session whose directory is `session_dir`.
    pub fn new(session_dir: &Path) -> Stored {
        Stored {
            dir: session_dir.join("workspace"),
        }
    }

    /// Records what was mounted.
    pub fn record_mount(&self, mounted: &Mounted) -> io::Result<()> {
        create_private_dir(&self.dir)?;
        let json = serde_json::to_vec_pretty(mounted).map_err(io::Error::other)?;
        write_atomic(&self.dir.join("mounted.json"), &json)
    }

    /// What was mounted; `None` if the session had no workspace.
    pub fn mounted(&self) -> Option<Mounted> {
        let text = fs::read(self.dir.join("mounted.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The records' own directory (private).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The changes archive.
    pub fn archive(&self) -> PathBuf {
        self.dir.join("changes.tar")
    }

    /// Whether changes were saved and not discarded.
    pub fn has_changes(&self) -> bool {
        self.archive().is_file()
    }

    /// Saves the archive `chunks` as the session's changes, at most
    /// `limit` bytes: beyond, nothing is kept and the error says so. The
    /// previous changes stay until the new ones are complete.
    pub async fn save_changes<E: std::fmt::Display>(
        &self,
        chunks: impl Stream<Item = Result<Bytes, E>>,
        limit: u64,
    ) -> Result<u64, WorkspaceError> {
        let partial = self.dir.join("changes.tar.part");
        let err = |source| WorkspaceError::Archive {
            path: partial.clone(),
            source,
        };
        create_private_dir(&self.dir).map_err(err)?;
        // A copy cut short by a crash is never worth keeping.
        let _ = fs::remove_file(&partial);
        let mut file = create_private(&partial).map_err(err)?;
        let mut chunks = std::pin::pin!(chunks);
        let mut total = 0u64;
        let result = async {
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| io::Error::other(e.to_string()))?;
                total += chunk.len() as u64;
                if total > limit {
                    return Err(io::Error::other(format!(
                        "the changes are larger than sandbox.max_copy_bytes ({limit} bytes); none were kept"
                    )));
                }
                file.write_all(&chunk)?;
            }
            file.sync_all()?;
            fs::rename(&partial, self.archive())
        }
        .await;
        if let Err(e) = result {
            let _ = fs::remove_file(&partial);
            return Err(err(e));
        }
        Ok(total)
    }

    /// Forgets the changes (`capsem discard`).
    pub fn discard(&self) -> io::Result<()> {
        match fs::remove_file(self.archive()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every apply and discard recorded, oldest first (lines that do not
    /// parse are skipped).
    pub fn applied(&self) -> Vec<ApplyRecord> {
        let text = fs::read_to_string(self.dir.join("applied.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Appends `record` to `applied.jsonl`.
    pub fn record(&self, record: &ApplyRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(self.dir.join("applied.jsonl"))?
            .write_all(&line)
    }
}
