//! Copies in and out of the guest as tar streams (`capsem cp`).
//!
//! In: the archive's entries sit under one top name; they are unpacked
//! into a fresh directory beside the target and renamed into place once
//! complete, so a copy that fails half-way leaves the target as it was.
//! Out: the path is archived under its own name, symlinks as symlinks.
//! The tar work runs on blocking threads; chunks cross to the channel
//! through small bounded queues, so neither side buffers an archive.

use std::io;
use std::path::Path;

use capsem_proto::archive::{self, scratch_dir};
use capsem_proto::blocking::{QueueReader, QueueWriter};
use capsem_proto::{
    ArchiveTarget, GuestToHost, HostToGuest, validate_copy_path, validate_top_name,
};
use futures::{SinkExt, StreamExt};

use crate::exec::Channel;

/// Chunks queued between the channel and a tar thread.
const QUEUE: usize = 4;

/// Receives an archive on `channel` and unpacks it at `target`.
pub async fn put(mut channel: Channel, target: ArchiveTarget) {
    let checked = validate_copy_path(&target.dest).and_then(|()| validate_top_name(&target.name));
    if let Err(e) = checked {
        let _ = channel.send(GuestToHost::Refused(e.to_string())).await;
        return;
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(QUEUE);
    let unpack = tokio::task::spawn_blocking(move || unpack(&target, QueueReader::new(rx)));
    let mut failed = None;
    let mut tx = Some(tx);
    while let Some(msg) = channel.next().await {
        match msg {
            Ok(HostToGuest::Data(data)) => {
                // A failed unpack drops its end: the rest is drained.
                if let Some(sender) = &tx
                    && sender.send(data).await.is_err()
                {
                    tx = None;
                }
            }
            Ok(HostToGuest::DataEnd) => break,
            Ok(other) => {
                failed = Some(format!("unexpected {other:?} in an archive"));
                break;
            }
            Err(e) => {
                failed = Some(format!("a bad frame in an archive: {e}"));
                break;
            }
        }
    }
    drop(tx);
    let unpacked = unpack
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
    let reply = match (failed, unpacked) {
        (Some(why), _) => GuestToHost::Refused(why),
        (None, Err(e)) => GuestToHost::Refused(format!("unpacking: {e}")),
        (None, Ok(())) => GuestToHost::Done,
    };
    let _ = channel.send(reply).await;
}

fn unpack(target: &ArchiveTarget, reader: QueueReader) -> io::Result<()> {
    let dest = Path::new(&target.dest);
    let final_path = if target.dest.ends_with('/') || dest.is_dir() {
        dest.join(&target.name)
    } else {
        dest.to_path_buf()
    };
    let parent = final_path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent)?;
    let scratch = scratch_dir(parent)?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    let result = archive.unpack(&scratch).and_then(|()| {
        let unpacked = scratch.join(&target.name);
        if final_path.is_dir() && !final_path.is_symlink() {
            std::fs::remove_dir_all(&final_path)?;
        }
        std::fs::rename(unpacked, &final_path)
    });
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Sends `path` as an archive on `channel`.
pub async fn get(mut channel: Channel, path: String) {
    if let Err(e) = validate_copy_path(&path) {
        let _ = channel.send(GuestToHost::Refused(e.to_string())).await;
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(QUEUE);
    let pack = tokio::task::spawn_blocking(move || pack(Path::new(&path), QueueWriter::new(tx)));
    while let Some(chunk) = rx.recv().await {
        if channel.send(GuestToHost::Data(chunk)).await.is_err() {
            return;
        }
    }
    let reply = match pack.await {
        Ok(Ok(())) => GuestToHost::Done,
        Ok(Err(e)) => GuestToHost::Refused(e.to_string()),
        Err(e) => GuestToHost::Refused(e.to_string()),
    };
    let _ = channel.send(reply).await;
}

fn pack(path: &Path, out: QueueWriter) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} has no name to copy under", path.display())))?;
    archive::pack(path, &name.to_string_lossy(), false, out)
}
