//! Writing the files the host sends before a command (AI CLI defaults).
//!
//! They are checked here as well as on the host: absolute, normalized paths
//! under `/root`, `/tmp` or `/run`, plain modes, bounded count and size.
//! They are written into a fresh VM before any command has run, without
//! following a symlink at the target.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use capsem_proto::{GuestFile, GuestToHost, validate_files};
use futures::SinkExt;

use crate::exec::Channel;

/// Writes `files` and answers on `channel`.
pub async fn serve(mut channel: Channel, files: Vec<GuestFile>) {
    let reply = match write_all(&files) {
        Ok(()) => GuestToHost::Done,
        Err(why) => GuestToHost::Refused(why),
    };
    let _ = channel.send(reply).await;
}

fn write_all(files: &[GuestFile]) -> Result<(), String> {
    validate_files(files).map_err(|e| e.to_string())?;
    for file in files {
        write_one(file).map_err(|e| format!("writing {}: {e}", file.path))?;
    }
    Ok(())
}

fn write_one(file: &GuestFile) -> std::io::Result<()> {
    let path = Path::new(&file.path);
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(file.mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    out.write_all(&file.contents)?;
    // The umask may have narrowed the mode. On the open file, not by name:
    // the name could be swapped for a symlink meanwhile.
    out.set_permissions(fs::Permissions::from_mode(file.mode))
}
