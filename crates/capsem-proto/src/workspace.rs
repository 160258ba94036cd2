//! The workspace: the user's project, which the host serves read-only to a
//! FUSE mount in the guest, and the changes the guest made on top of it.
//!
//! The guest opens streams whose messages are [`FsRequest`]s (in
//! [`GuestToHost::Fs`](crate::GuestToHost::Fs)), one at a time, each
//! answered by [`FsReply`]s. Requests name files by their path under the
//! project's root, never by a host handle: the host opens each path again,
//! beneath the root and without following any symlink, so a request can
//! reach nothing outside the project and holds nothing open on the host.
//! The guest's kernel resolves symlinks itself, inside the guest.

use serde::{Deserialize, Serialize};

use crate::msg::ProtocolError;

/// Longest path a request may name, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest name of one entry (Linux's `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// Most bytes one read asks for.
pub const MAX_READ_BYTES: u32 = 128 * 1024;
/// Most directory entries in one [`FsReply::Entries`]: with the longest
/// names and their attributes, well under a frame.
pub const MAX_ENTRIES_PER_REPLY: usize = 1024;

/// The name of the file, in a directory of the changes, that stands for
/// an entry the guest deleted (`.wh.NAME`, as in OCI image layers).
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The name of the file that marks a directory the guest replaced: what
/// the project has under it is gone.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The directory of the changes archive under which the project's files
/// sit.
pub const CHANGES_FILES: &str = "files";
/// The changes archive's entry holding the commits made in the guest (a
/// git bundle), if there are any.
pub const BUNDLE_ENTRY: &str = "commits.bundle";

/// A request from the guest's FUSE mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsRequest {
    /// The attributes of `path` itself; a symlink is not followed.
    /// Answered by [`FsReply::Attr`].
    Stat {
        /// Path under the project's root; empty for the root.
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    /// The entries of the directory `path`, answered by
    /// [`FsReply::Entries`] chunks and then [`FsReply::End`].
    List {
        /// Path under the project's root; empty for the root.
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    /// Bytes of the regular file `path`, answered by [`FsReply::Data`]
    /// (shorter at the end of the file).
    Read {
        /// Path under the project's root.
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        /// Where to start.
        offset: u64,
        /// How many bytes, at most [`MAX_READ_BYTES`].
        size: u32,
    },
    /// The target of the symlink `path`, answered by [`FsReply::Data`].
    ReadLink {
        /// Path under the project's root.
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
}

/// The host's answer to an [`FsRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsReply {
    /// A file's attributes.
    Attr(FsAttr),
    /// Some entries of a directory.
    Entries(Vec<FsEntry>),
    /// The directory's entries are complete.
    End,
    /// File contents or a symlink's target.
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The request failed with this `errno`.
    Error(i32),
}

/// What the guest sees of a file of the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsAttr {
    /// Its kind.
    pub kind: FsKind,
    /// Permission bits, without setuid, setgid or sticky.
    pub perm: u16,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// Hard links.
    pub nlink: u32,
}

/// The kinds of file a workspace shows; the project's devices, sockets and
/// FIFOs are not shown at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symlink.
    Symlink,
}

/// One entry of a directory, with its attributes: the guest answers the
/// lookups that follow a listing (`git status`, `find`) without asking
/// again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsEntry {
    /// Its name.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Its attributes.
    pub attr: FsAttr,
}

/// Where the guest keeps what it writes over the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Upper {
    /// In memory: gone with the VM once the host has exported it.
    Memory,
    /// On the sandbox's own disk: kept across stop and start.
    Disk,
}

/// The host asks the guest to mount the workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceMount {
    /// The directory under `/root` it appears as (the project's name).
    pub name: String,
    /// Where the guest's changes go.
    pub upper: Upper,
}

impl FsRequest {
    /// The path the request names.
    pub fn path(&self) -> &[u8] {
        match self {
            FsRequest::Stat { path }
            | FsRequest::List { path }
            | FsRequest::Read { path, .. }
            | FsRequest::ReadLink { path } => path,
        }
    }

    /// Checks a request from an untrusted guest.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        validate_path(self.path())?;
        match self {
            FsRequest::Read { size, .. } if *size > MAX_READ_BYTES => {
                Err(ProtocolError::ChunkTooLarge(*size as usize))
            }
            _ => Ok(()),
        }
    }
}

/// Checks a path under the project's root: empty (the root) or normal
/// components joined by single `/`, none `.` or `..`, no NUL, bounded.
pub fn validate_path(path: &[u8]) -> Result<(), ProtocolError> {
    let bad =
        || ProtocolError::BadPath(String::from_utf8_lossy(&path[..path.len().min(200)]).into());
    if path.len() > MAX_PATH_BYTES {
        return Err(bad());
    }
    if path.is_empty() {
        return Ok(());
    }
    let normal = |c: &[u8]| {
        !c.is_empty() && c != b"." && c != b".." && c.len() <= MAX_NAME_BYTES && !c.contains(&0)
    };
    if path.split(|&b| b == b'/').all(normal) {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Checks the directory name a workspace appears as under `/root`.
pub fn validate_mount(mount: &WorkspaceMount) -> Result<(), ProtocolError> {
    crate::msg::validate_top_name(&mount.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normal_components_under_the_root() {
        for good in [&b""[..], b"a", b"a/b.c", b".hidden/x", b"...", b"a b"] {
            assert!(validate_path(good).is_ok(), "{good:?}");
        }
        for bad in [
            &b"/"[..],
            b"/etc",
            b"..",
            b"a/../b",
            b"a/./b",
            b"a//b",
            b"a/",
            b"a\0b",
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
        assert!(validate_path(&vec![b'a'; MAX_NAME_BYTES + 1]).is_err());
        assert!(validate_path(&b"a/".repeat(MAX_PATH_BYTES)).is_err());
    }

    #[test]
    fn reads_are_bounded() {
        let read = |size| FsRequest::Read {
            path: b"f".to_vec(),
            offset: 0,
            size,
        };
        assert!(read(MAX_READ_BYTES).validate().is_ok());
        assert!(read(MAX_READ_BYTES + 1).validate().is_err());
    }
}
