//! A directory tree on the host reached only beneath its root: every open
//! goes through `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`, so no `..`, symlink or mount
//! point in a path leads out of it, whoever chose the path.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// The root of a tree.
pub struct Tree {
    root: OwnedFd,
}

impl Tree {
    /// Opens the directory `root`.
    pub fn open_root(root: &Path) -> std::io::Result<Tree> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Tree { root: fd })
    }

    /// Opens `path` (relative; empty for the root) beneath the root,
    /// following nothing.
    pub fn open(&self, path: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
        self.open_mode(path, flags, Mode::empty())
    }

    /// [`Tree::open`] with the mode of a file it creates.
    pub fn open_mode(&self, path: &[u8], flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
        let path = if path.is_empty() { b"." } else { path };
        let resolve = ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV;
        // openat2 refuses O_PATH with any flag but these three.
        let mut flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if !flags.contains(OFlags::PATH) {
            flags |= OFlags::NOCTTY;
        }
        rustix::fs::openat2(&self.root, OsStr::from_bytes(path), flags, mode, resolve)
    }

    /// The status of `path` itself (a symlink is not followed); `None`
    /// when it does not exist.
    pub fn lstat(&self, path: &[u8]) -> Result<Option<rustix::fs::Stat>, Errno> {
        match self.open(path, OFlags::PATH) {
            Ok(fd) => rustix::fs::fstat(&fd).map(Some),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `dir/name`, or `name` at the root.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

/// The directory part and the name of a relative path.
pub fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(at) => (&path[..at], &path[at + 1..]),
        None => (&[], path),
    }
}
