//! Serving the project read-only to the guest's FUSE mount.
//!
//! Every request names a path under the project's root. It is opened
//! again for each request with `openat2` from the root's descriptor,
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV`: no `..` out, no symlink followed (the guest resolves
//! symlinks itself, inside the guest), no crossing into another mount. Only
//! descriptors opened read-only exist, and none outlives its request, so
//! nothing the guest asks can write a host byte or hold host descriptors.
//! Excluded paths answer as if absent.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use capsem_proto::workspace::{FsAttr, FsEntry, FsKind, FsReply, FsRequest, MAX_ENTRIES_PER_REPLY};
use capsem_proto::{GuestToHost, HostCodec, HostToGuest};
use futures::{SinkExt, StreamExt};
use globset::{Glob, GlobSet, GlobSetBuilder};
use rustix::fs::{FileType, OFlags};
use rustix::io::Errno;
use tokio_util::codec::Framed;

use super::WorkspaceError;
use super::tree::{Tree, join};

/// Most entries of one directory the guest is shown; a directory of more
/// answers `EFBIG` rather than make the host hold them all.
pub const MAX_DIR_ENTRIES: usize = 1 << 20;

/// A stream the guest opened for workspace requests.
pub type FsStream = Framed<tokio_util::compat::Compat<capsem_proto::mux::Stream>, HostCodec>;

/// The project as the guest may see it.
pub struct Export {
    tree: Tree,
    excludes: Excludes,
}

impl Export {
    /// Exports the directory `root`, hiding what matches `excludes`.
    pub fn new(root: &Path, excludes: &[String]) -> Result<Export, WorkspaceError> {
        let tree = Tree::open_root(root).map_err(|source| WorkspaceError::Open {
            path: root.to_owned(),
            source,
        })?;
        Ok(Export {
            tree,
            excludes: Excludes::new(excludes)?,
        })
    }

    /// Answers the requests of one guest stream, `first` and then each
    /// that follows, until the guest closes it or breaks the protocol.
    pub async fn serve(self: Arc<Self>, first: FsRequest, mut stream: FsStream) {
        let mut next = Some(first);
        loop {
            let req = match next.take() {
                Some(req) => req,
                None => match stream.next().await {
                    Some(Ok(GuestToHost::Fs(req))) => req,
                    None => return,
                    Some(Ok(other)) => {
                        tracing::warn!("a workspace stream cannot carry {other:?}");
                        return;
                    }
                    Some(Err(e)) => {
                        tracing::warn!("bad frame on a workspace stream: {e}");
                        return;
                    }
                },
            };
            if let Err(e) = req.validate() {
                tracing::warn!("the guest broke the protocol on a workspace stream: {e}");
                return;
            }
            let export = self.clone();
            let Ok(replies) = tokio::task::spawn_blocking(move || export.answer(&req)).await else {
                return;
            };
            for reply in replies {
                if stream.send(HostToGuest::Fs(reply)).await.is_err() {
                    return;
                }
            }
        }
    }

    /// The replies to one (validated) request.
    pub fn answer(&self, req: &FsRequest) -> Vec<FsReply> {
        let path = req.path();
        if self.excludes.hides(path) {
            return vec![FsReply::Error(Errno::NOENT.raw_os_error())];
        }
        let answered = match req {
            FsRequest::Stat { .. } => self.stat(path).map(|a| vec![FsReply::Attr(a)]),
            FsRequest::List { .. } => self.list(path),
            FsRequest::Read { offset, size, .. } => self
                .read(path, *offset, *size)
                .map(|d| vec![FsReply::Data(d)]),
            FsRequest::ReadLink { .. } => self.readlink(path).map(|d| vec![FsReply::Data(d)]),
        };
        answered.unwrap_or_else(|e| vec![FsReply::Error(e.raw_os_error())])
    }

    fn stat(&self, path: &[u8]) -> Result<FsAttr, Errno> {
        let fd = self.tree.open(path, OFlags::PATH)?;
        attr(&rustix::fs::fstat(&fd)?)
    }

    fn list(&self, path: &[u8]) -> Result<Vec<FsReply>, Errno> {
        let fd = self.tree.open(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let mut entries = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if self.excludes.hides(&join(path, name)) {
                continue;
            }
            // The entry itself, beneath the directory already opened
            // beneath the root: a symlink is stat'ed, not followed.
            let flags = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
            let Ok(attr) = rustix::fs::statat(&fd, entry.file_name(), flags).map(|st| attr(&st))
            else {
                continue;
            };
            // Devices, FIFOs and sockets are not shown.
            let Ok(attr) = attr else { continue };
            if entries.len() == MAX_DIR_ENTRIES {
                return Err(Errno::FBIG);
            }
            entries.push(FsEntry {
                name: name.to_vec(),
                attr,
            });
        }
        let mut replies: Vec<FsReply> = entries
            .chunks(MAX_ENTRIES_PER_REPLY)
            .map(|chunk| FsReply::Entries(chunk.to_vec()))
            .collect();
        replies.push(FsReply::End);
        Ok(replies)
    }

    fn read(&self, path: &[u8], offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        // Non-blocking, so that a FIFO cannot hang the open; only a
        // regular file is read.
        let fd = self.tree.open(path, OFlags::RDONLY | OFlags::NONBLOCK)?;
        if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::RegularFile {
            return Err(Errno::ACCESS);
        }
        let mut buf = vec![0; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match rustix::io::pread(&fd, &mut buf[filled..], offset + filled as u64)? {
                0 => break,
                n => filled += n,
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    fn readlink(&self, path: &[u8]) -> Result<Vec<u8>, Errno> {
        let fd = self.tree.open(path, OFlags::PATH)?;
        let target = rustix::fs::readlinkat(fd.as_fd(), c"", Vec::new())?;
        Ok(target.into_bytes())
    }
}

fn kind(file_type: FileType) -> Option<FsKind> {
    match file_type {
        FileType::RegularFile => Some(FsKind::File),
        FileType::Directory => Some(FsKind::Dir),
        FileType::Symlink => Some(FsKind::Symlink),
        _ => None,
    }
}

/// The guest's view of a file: no owner (the guest owns what it sees),
/// no setuid, setgid or sticky bit; devices, FIFOs and sockets absent.
fn attr(st: &rustix::fs::Stat) -> Result<FsAttr, Errno> {
    let kind = kind(FileType::from_raw_mode(st.st_mode)).ok_or(Errno::NOENT)?;
    let ns = |secs: i64, nsecs: i64| secs.saturating_mul(1_000_000_000).saturating_add(nsecs);
    Ok(FsAttr {
        kind,
        perm: (st.st_mode & 0o777) as u16,
        size: st.st_size as u64,
        mtime_ns: ns(st.st_mtime, st.st_mtime_nsec as i64),
        ctime_ns: ns(st.st_ctime, st.st_ctime_nsec as i64),
        nlink: st.st_nlink as u32,
    })
}

/// `workspace.exclude`: a glob without `/` hides every file or directory
/// of that name at any depth (`.env`, `*.pem`); one with `/` hides that
/// path from the project's root (`secrets/**`). What is under a hidden
/// directory is hidden too.
pub struct Excludes {
    names: GlobSet,
    paths: GlobSet,
}

impl Excludes {
    /// Compiles the globs; a malformed one is refused by name.
    pub fn new(globs: &[String]) -> Result<Excludes, WorkspaceError> {
        let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        for text in globs {
            let glob = globset::GlobBuilder::new(text.trim_end_matches('/'))
                .literal_separator(true)
                .build()
                .map_err(|e| WorkspaceError::Exclude(text.clone(), e.to_string()))?;
            if text.trim_end_matches('/').contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
            // `dir/**` hides the directory itself too, not only its
            // contents: an empty directory still says what it held.
            if let Some(dir) = text.strip_suffix("/**") {
                let glob = Glob::new(dir)
                    .map_err(|e| WorkspaceError::Exclude(text.clone(), e.to_string()))?;
                if dir.contains('/') {
                    paths.add(glob)
                } else {
                    names.add(glob)
                };
            }
        }
        let build = |set: GlobSetBuilder| {
            set.build()
                .map_err(|e| WorkspaceError::Exclude(globs.join(", "), e.to_string()))
        };
        Ok(Excludes {
            names: build(names)?,
            paths: build(paths)?,
        })
    }

    /// Whether `path` (under the project's root), or a directory it is
    /// in, is excluded.
    pub fn hides(&self, path: &[u8]) -> bool {
        if path.is_empty() {
            return false;
        }
        let mut end = 0;
        for component in path.split(|&b| b == b'/') {
            end += component.len();
            let prefix = OsStr::from_bytes(&path[..end]);
            if self.names.is_match(OsStr::from_bytes(component)) || self.paths.is_match(prefix) {
                return true;
            }
            end += 1;
        }
        false
    }
}
