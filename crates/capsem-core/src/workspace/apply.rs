//! Writing a sandbox's accepted changes into the project.
//!
//! Nothing is written when any selected change conflicts (the host's file
//! changed after the sandbox first saw the project) unless forced. Files
//! are written to a temporary name beside their target and renamed over
//! it, so a reader sees the old file or the new one, never half; modes
//! keep their permission bits only (never setuid, setgid or sticky); every
//! path is reached beneath the project's root without following a symlink
//! ([`Tree`]), so a change can land nowhere else. Deletions remove exactly
//! the files listed, deepest first: a directory that still holds files the
//! sandbox could not see stays.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rand::RngExt;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::Serialize;

use super::WorkspaceError;
use super::changes::{Change, ChangeKind, Changes, Mounted, NodeKind};
use super::tree::{Tree, split};
use capsem_proto::workspace::CHANGES_FILES;

/// What to apply.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only changes at or under these paths (under the project's root);
    /// empty for all.
    pub paths: Vec<String>,
    /// Apply `.git/hooks/*` and `.git/config` changes too.
    pub include_git_internals: bool,
    /// Overwrite host files that changed after the sandbox saw them.
    pub force: bool,
}

impl Selection {
    /// Whether `change` is selected.
    pub fn selects(&self, change: &Change) -> bool {
        let under = |p: &str| {
            self.paths.is_empty()
                || self.paths.iter().any(|sel| {
                    let sel = sel.trim_end_matches('/');
                    p == sel
                        || p.strip_prefix(sel)
                            .is_some_and(|rest| rest.starts_with('/'))
                })
        };
        (!change.git_internal || self.include_git_internals)
            && (under(&change.path) || change.from.as_deref().is_some_and(under))
    }
}

/// A host file that changed after the sandbox first saw the project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// The path under the project.
    pub path: String,
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Paths written, created or removed.
    pub paths: Vec<String>,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Directories left in place because they still hold files.
    pub kept: Vec<String>,
}

/// The outcome: applied, or refused for conflicts (nothing written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Applied(Applied),
    /// These conflict; nothing was written.
    Conflicts(Vec<Conflict>),
}

/// Applies the selected `changes` (compared from `archive`) to the
/// project of `mounted`.
pub fn apply(
    changes: &Changes,
    archive: &Path,
    mounted: &Mounted,
    selection: &Selection,
) -> Result<Outcome, WorkspaceError> {
    let tree = Tree::open_root(&mounted.root).map_err(|source| WorkspaceError::Open {
        path: mounted.root.clone(),
        source,
    })?;
    let chosen: Vec<&Change> = changes
        .changes
        .iter()
        .filter(|c| selection.selects(c))
        .collect();
    if !selection.force {
        let conflicts = conflicts(&tree, &chosen, mounted.mounted_at_ns);
        if !conflicts.is_empty() {
            return Ok(Outcome::Conflicts(conflicts));
        }
    }
    let mut done = Applied::default();
    remove_all(&tree, &chosen, &mut done)?;
    write_all(&tree, &chosen, archive, &mut done)?;
    Ok(Outcome::Applied(done))
}

/// The selected changes whose host file changed after `since_ns`.
fn conflicts(tree: &Tree, chosen: &[&Change], since_ns: i64) -> Vec<Conflict> {
    let changed = |path: &str| {
        tree.lstat(path.as_bytes())
            .ok()
            .flatten()
            .is_some_and(|st| {
                let ctime = (st.st_ctime).saturating_mul(1_000_000_000) + st.st_ctime_nsec as i64;
                ctime > since_ns
            })
    };
    let mut found = BTreeSet::new();
    for change in chosen {
        for path in std::iter::once(change.path.as_str()).chain(change.from.as_deref()) {
            if changed(path) {
                found.insert(path.to_owned());
            }
        }
    }
    found.into_iter().map(|path| Conflict { path }).collect()
}

/// Removes deleted files and what an added file replaces, deepest first.
fn remove_all(tree: &Tree, chosen: &[&Change], done: &mut Applied) -> Result<(), WorkspaceError> {
    let mut gone: Vec<(&str, bool)> = Vec::new();
    for change in chosen {
        match change.change {
            ChangeKind::Deleted => {
                let dir = change
                    .before
                    .as_ref()
                    .is_some_and(|n| n.kind == NodeKind::Dir);
                gone.push((&change.path, dir));
            }
            ChangeKind::Renamed => gone.push((change.from.as_deref().unwrap_or_default(), false)),
            ChangeKind::Added | ChangeKind::Modified => {}
        }
    }
    gone.sort_by_key(|(path, _)| std::cmp::Reverse(path.matches('/').count()));
    for (path, dir) in gone {
        match remove(tree, path, dir) {
            Ok(()) => done.paths.push(path.to_owned()),
            Err(Errno::NOTEMPTY) if dir => done.kept.push(path.to_owned()),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(write_err(path, e)),
        }
    }
    Ok(())
}

fn remove(tree: &Tree, path: &str, dir: bool) -> Result<(), Errno> {
    let (parent, name) = split(path.as_bytes());
    let parent = tree.open(parent, OFlags::PATH | OFlags::DIRECTORY)?;
    let flags = if dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    rustix::fs::unlinkat(&parent, OsStr::from_bytes(name), flags)
}

/// Writes every selected file, symlink and directory, in one pass over
/// the archive (directories come before what they hold).
fn write_all(
    tree: &Tree,
    chosen: &[&Change],
    archive: &Path,
    done: &mut Applied,
) -> Result<(), WorkspaceError> {
    let wanted: BTreeMap<&str, &Change> = chosen
        .iter()
        .filter(|c| c.change != ChangeKind::Deleted)
        .map(|c| (c.path.as_str(), *c))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let read_err = |source| WorkspaceError::Archive {
        path: archive.to_owned(),
        source,
    };
    let file = File::open(archive).map_err(read_err)?;
    let mut tar = tar::Archive::new(io::BufReader::new(file));
    for entry in tar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw = entry.path_bytes().into_owned();
        let Some(path) = std::str::from_utf8(&raw)
            .ok()
            .and_then(|p| p.trim_end_matches('/').strip_prefix(CHANGES_FILES))
            .and_then(|p| p.strip_prefix('/'))
        else {
            continue;
        };
        let Some(change) = wanted.get(path) else {
            continue;
        };
        let Some(after) = &change.after else { continue };
        let mode = Mode::from_raw_mode(after.mode & 0o777);
        let wrote = match after.kind {
            NodeKind::Dir => make_dirs(tree, path.as_bytes(), mode).map(|()| 0),
            NodeKind::Symlink => {
                let target = after.target.as_deref().unwrap_or_default();
                replace(tree, path, |dir, tmp| {
                    rustix::fs::symlinkat(target, dir, tmp)?;
                    Ok(0)
                })
            }
            NodeKind::File => replace(tree, path, |dir, tmp| {
                let fd = rustix::fs::openat(
                    dir,
                    tmp,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    mode,
                )?;
                rustix::fs::fchmod(&fd, mode)?;
                let mut out = File::from(fd);
                let n = io::copy(&mut (&mut entry).take(after.size), &mut out)
                    .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
                out.flush().map_err(|_| Errno::IO)?;
                out.sync_all().map_err(|_| Errno::IO)?;
                Ok(n)
            }),
        }
        .map_err(|e| write_err(path, e))?;
        done.bytes += wrote;
        done.paths.push(path.to_owned());
    }
    Ok(())
}

/// Tries at making a temporary name before giving up: each is 64 random
/// bits, so a clash means someone else's file sits at one, never ours.
const TEMP_TRIES: usize = 8;

/// Creates `path` (with `make`, under a fresh random name in its directory)
/// and renames it over whatever is there. `make` must fail with `EEXIST`
/// rather than touch an existing name (O_EXCL, symlinkat), so a project
/// file that happens to have the temporary name is never removed.
fn replace(
    tree: &Tree,
    path: &str,
    mut make: impl FnMut(&std::os::fd::OwnedFd, &OsStr) -> Result<u64, Errno>,
) -> Result<u64, Errno> {
    let (parent, name) = split(path.as_bytes());
    make_dirs(tree, parent, Mode::from_raw_mode(0o755))?;
    let dir = tree.open(parent, OFlags::PATH | OFlags::DIRECTORY)?;
    for _ in 0..TEMP_TRIES {
        let tmp = format!(".capsem-apply-{:016x}", rand::rng().random::<u64>());
        let tmp = OsStr::new(&tmp);
        let written = match make(&dir, tmp) {
            Ok(n) => n,
            Err(Errno::EXIST) => continue,
            Err(e) => {
                let _ = rustix::fs::unlinkat(&dir, tmp, AtFlags::empty());
                return Err(e);
            }
        };
        rustix::fs::renameat(&dir, tmp, &dir, OsStr::from_bytes(name)).inspect_err(|_| {
            let _ = rustix::fs::unlinkat(&dir, tmp, AtFlags::empty());
        })?;
        return Ok(written);
    }
    Err(Errno::EXIST)
}

/// Makes `path` and the directories above it, each beneath the root; an
/// existing directory keeps its mode unless it is `path` itself.
fn make_dirs(tree: &Tree, path: &[u8], mode: Mode) -> Result<(), Errno> {
    if path.is_empty() {
        return Ok(());
    }
    let mut end = 0;
    let parts: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    for (i, part) in parts.iter().enumerate() {
        let at = &path[..end];
        end += part.len();
        let here = &path[..end];
        end += 1;
        let last = i + 1 == parts.len();
        match tree.lstat(here)? {
            Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                if last {
                    let fd = tree.open(here, OFlags::RDONLY | OFlags::DIRECTORY)?;
                    rustix::fs::fchmod(&fd, mode)?;
                }
            }
            Some(_) => return Err(Errno::NOTDIR),
            None => {
                let parent = tree.open(at, OFlags::PATH | OFlags::DIRECTORY)?;
                let new_mode = if last {
                    mode
                } else {
                    Mode::from_raw_mode(0o755)
                };
                rustix::fs::mkdirat(&parent, OsStr::from_bytes(part), new_mode)?;
            }
        }
    }
    Ok(())
}

fn write_err(path: &str, e: Errno) -> WorkspaceError {
    WorkspaceError::Write {
        path: path.to_owned(),
        source: e.into(),
    }
}
