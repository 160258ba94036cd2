//! Copies between the host and a sandbox as tar streams (`capsem cp`).
//!
//! [`pack`] (the agent's too) archives a host path under its own name,
//! symlinks as symlinks unless asked to follow them. [`unpack`] writes an archive
//! from the guest, which is hostile, onto the host: every entry must sit
//! under the one top name, with plain relative components; only files,
//! directories and symlinks are accepted (symlinks are made, never
//! followed: nothing is written through a path that has a symlink in
//! it); setuid, setgid and sticky bits are dropped; the total size and the
//! number of entries are bounded. It all goes into a fresh directory
//! beside the destination, renamed into place only once complete, so a
//! hostile or broken archive leaves the host as it was.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

pub use capsem_proto::archive::pack;
use std::time::{Duration, SystemTime};

/// Most entries one archive may hold.
pub const MAX_ENTRIES: u64 = 1_000_000;

/// A copy failed; the destination is as it was.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The archive broke a rule.
    #[error("refused the sandbox's archive: {0}")]
    Hostile(String),
    /// What was asked for one file is not one.
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The path asked for.
        path: String,
    },
    /// It is larger than allowed.
    #[error("the copy is larger than sandbox.max_copy_bytes ({limit} bytes); nothing was written")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Host I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> CopyError {
    let what = what.into();
    move |source| CopyError::Io { what, source }
}

fn hostile(why: impl Into<String>) -> CopyError {
    CopyError::Hostile(why.into())
}

/// Where an archive from the guest goes, and what it may hold.
pub struct Unpack<'a> {
    /// The path the copy becomes (`DEST`, or `DEST/NAME` for a directory
    /// `DEST`, decided by the caller).
    pub target: &'a Path,
    /// The archive's top name.
    pub top: &'a str,
    /// Most bytes of file contents.
    pub max_bytes: u64,
}

/// What was written.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries written.
    pub entries: u64,
    /// Bytes of file contents.
    pub bytes: u64,
}

/// Writes the archive read from `input` at `spec.target`.
pub fn unpack(input: impl Read, spec: &Unpack<'_>) -> Result<Unpacked, CopyError> {
    if fs::symlink_metadata(spec.target).is_ok_and(|m| m.is_dir()) {
        return Err(CopyError::Io {
            what: format!("copying to {}", spec.target.display()),
            source: io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a directory of that name exists",
            ),
        });
    }
    let parent = spec
        .target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let scratch = capsem_proto::archive::scratch_dir(parent).map_err(io_err(format!(
        "creating a directory in {}",
        parent.display()
    )))?;
    let written = write_entries(input, spec, &scratch).and_then(|done| {
        fs::rename(scratch.join(spec.top), spec.target).map_err(io_err(format!(
            "moving the copy to {}",
            spec.target.display()
        )))?;
        Ok(done)
    });
    let _ = fs::remove_dir_all(&scratch);
    written
}

/// Directories' modification times are set last: writing into a
/// directory changes its own.
fn write_entries(
    input: impl Read,
    spec: &Unpack<'_>,
    scratch: &Path,
) -> Result<Unpacked, CopyError> {
    let mut archive = tar::Archive::new(input);
    let mut done = Unpacked::default();
    let mut dir_times = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| hostile(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| hostile(format!("a broken archive: {e}")))?;
        done.entries += 1;
        if done.entries > MAX_ENTRIES {
            return Err(hostile(format!("more than {MAX_ENTRIES} entries")));
        }
        let raw = entry
            .path()
            .map_err(|e| hostile(format!("a bad name: {e}")))?
            .into_owned();
        let relative = checked_path(&raw, spec.top)?;
        let path = scratch.join(&relative);
        no_symlink_above(scratch, &relative)?;
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o600) & 0o777;
        let mtime = header
            .mtime()
            .ok()
            .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t));
        match header.entry_type() {
            tar::EntryType::Directory => {
                make_dir(&path, mode)?;
                dir_times.extend(mtime.map(|t| (path.clone(), t)));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = header.size().unwrap_or(0);
                if done.bytes.saturating_add(size) > spec.max_bytes {
                    return Err(CopyError::TooLarge {
                        limit: spec.max_bytes,
                    });
                }
                done.bytes += write_file(&mut entry, &path, mode, spec.max_bytes - done.bytes)?;
                if let Some(t) = mtime {
                    let _ = fs::File::options()
                        .write(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&path)
                        .and_then(|f| f.set_modified(t));
                }
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| hostile(format!("a bad link: {e}")))?
                    .ok_or_else(|| hostile("a symlink without a target"))?;
                symlink(&link, &path).map_err(io_err(format!("linking {}", relative.display())))?;
            }
            other => {
                return Err(hostile(format!(
                    "{} is a {other:?}: only files, directories and symlinks are copied",
                    relative.display()
                )));
            }
        }
    }
    if fs::symlink_metadata(scratch.join(spec.top)).is_err() {
        return Err(hostile(format!(
            "nothing named {} in the archive",
            spec.top
        )));
    }
    for (dir, time) in dir_times.into_iter().rev() {
        let _ = fs::File::open(&dir).and_then(|d| d.set_modified(time));
    }
    Ok(done)
}

/// The entry's path, which must be `top` or below it in plain components.
fn checked_path(raw: &Path, top: &str) -> Result<PathBuf, CopyError> {
    let mut components = raw.components().filter(|c| *c != Component::CurDir);
    let first = components.next();
    if first != Some(Component::Normal(top.as_ref())) {
        return Err(hostile(format!("{} is not under {top}", raw.display())));
    }
    let mut path = PathBuf::from(top);
    for component in components {
        match component {
            Component::Normal(part) => path.push(part),
            _ => return Err(hostile(format!("{} leaves the copy", raw.display()))),
        }
    }
    Ok(path)
}

/// Refuses an entry whose parent directories include a symlink (made by
/// an earlier entry) or anything but a directory.
fn no_symlink_above(scratch: &Path, relative: &Path) -> Result<(), CopyError> {
    let mut at = scratch.to_path_buf();
    let parents: Vec<_> = relative.components().collect();
    for component in &parents[..parents.len().saturating_sub(1)] {
        at.push(component);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(hostile(format!(
                    "{} would be written through {}, which is not a directory",
                    relative.display(),
                    at.strip_prefix(scratch).unwrap_or(&at).display()
                )));
            }
            Err(_) => make_dir(&at, 0o755)?,
        }
    }
    Ok(())
}

fn make_dir(path: &Path, mode: u32) -> Result<(), CopyError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(hostile(format!(
                "{} is already there and not a directory",
                path.display()
            )));
        }
        Err(_) => fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(io_err(format!("creating {}", path.display())))?,
    }
    // Owner access is kept so the copy can be filled and removed.
    fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700))
        .map_err(io_err(format!("setting the mode of {}", path.display())))
}

fn write_file(entry: &mut impl Read, path: &Path, mode: u32, room: u64) -> Result<u64, CopyError> {
    let what = || format!("writing {}", path.display());
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(what()))?;
    // The header's size is the guest's word: the bytes are counted too.
    let copied =
        io::copy(&mut entry.take(room.saturating_add(1)), &mut out).map_err(io_err(what()))?;
    if copied > room {
        return Err(CopyError::TooLarge { limit: room });
    }
    out.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(what()))?;
    Ok(copied)
}

/// Archives `data` as one file `name` (a copy from stdin).
pub fn pack_bytes(data: &[u8], name: &str, out: impl Write) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    header.set_entry_type(tar::EntryType::Regular);
    let mut builder = tar::Builder::new(out);
    builder.append_data(&mut header, name, data)?;
    builder.into_inner()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        builder.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        // Raw names, so that hostile ones reach the parser as they are.
        let name = h.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn entry(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, link: Option<&str>) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_entry_type(kind);
        h.as_old_mut().name.as_mut()[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }

    fn unpack_into(dir: &Path, data: &[u8], max_bytes: u64) -> Result<Unpacked, CopyError> {
        let target = dir.join("out");
        unpack(
            data,
            &Unpack {
                target: &target,
                top: "out",
                max_bytes,
            },
        )
    }

    /// Only the scratch-free destination directory is left: nothing else.
    fn left(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_plain_archive_lands_with_its_modes_and_no_setid_bits() {
        let dir = tempfile::tempdir().unwrap();
        let data = archive(|b| {
            entry(b, "out/", tar::EntryType::Directory, None);
            file(b, "out/run.sh", b"#!/bin/sh\n", 0o4755);
            file(b, "out/sub/deep.txt", b"deep", 0o640);
            entry(b, "out/link", tar::EntryType::Symlink, Some("/etc/passwd"));
        });
        let done = unpack_into(dir.path(), &data, 1 << 20).unwrap();
        assert_eq!(done.bytes, 14);
        let mode = |p: &str| {
            fs::symlink_metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("out/run.sh"), 0o755);
        assert_eq!(mode("out/sub/deep.txt"), 0o640);
        assert_eq!(
            fs::read_link(dir.path().join("out/link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(left(dir.path()), ["out"]);
    }

    #[test]
    fn hostile_archives_are_refused_and_leave_nothing() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("parent", archive(|b| file(b, "out/../escape", b"x", 0o644))),
            ("absolute", archive(|b| file(b, "/tmp/escape", b"x", 0o644))),
            (
                "other top",
                archive(|b| file(b, "elsewhere/x", b"x", 0o644)),
            ),
            (
                "through a symlink",
                archive(|b| {
                    entry(b, "out/", tar::EntryType::Directory, None);
                    entry(b, "out/x", tar::EntryType::Symlink, Some("/etc"));
                    file(b, "out/x/passwd", b"root::0:0::/:/bin/sh\n", 0o644);
                }),
            ),
            (
                "a file over a symlink",
                archive(|b| {
                    entry(b, "out/", tar::EntryType::Directory, None);
                    entry(b, "out/x", tar::EntryType::Symlink, Some("/tmp/owned"));
                    file(b, "out/x", b"x", 0o644);
                }),
            ),
            (
                "hard link",
                archive(|b| entry(b, "out", tar::EntryType::Link, Some("/etc/shadow"))),
            ),
            (
                "device",
                archive(|b| entry(b, "out", tar::EntryType::Char, None)),
            ),
            (
                "fifo",
                archive(|b| entry(b, "out", tar::EntryType::Fifo, None)),
            ),
            ("garbage", vec![0xff; 1024]),
        ];
        for (what, data) in cases {
            let dir = tempfile::tempdir().unwrap();
            assert!(unpack_into(dir.path(), &data, 1 << 20).is_err(), "{what}");
            assert!(
                left(dir.path()).is_empty(),
                "{what}: {:?}",
                left(dir.path())
            );
        }
        assert!(!Path::new("/tmp/owned").exists());
    }

    #[test]
    fn the_size_bound_is_kept_whatever_the_headers_say() {
        let dir = tempfile::tempdir().unwrap();
        let data = archive(|b| {
            entry(b, "out/", tar::EntryType::Directory, None);
            file(b, "out/a", &[1u8; 600], 0o644);
            file(b, "out/b", &[2u8; 600], 0o644);
        });
        let err = unpack_into(dir.path(), &data, 1000).unwrap_err();
        assert!(matches!(err, CopyError::TooLarge { limit: 1000 }), "{err}");
        assert!(left(dir.path()).is_empty());
    }

    #[test]
    fn an_existing_directory_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("out")).unwrap();
        fs::write(dir.path().join("out/mine"), b"keep").unwrap();
        let data = archive(|b| file(b, "out", b"x", 0o644));
        assert!(unpack_into(dir.path(), &data, 1 << 20).is_err());
        assert_eq!(fs::read(dir.path().join("out/mine")).unwrap(), b"keep");
    }

    #[test]
    fn pack_and_unpack_round_trip_with_modes_and_times() {
        let src = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), b"hello").unwrap();
        fs::set_permissions(tree.join("a/b/f"), fs::Permissions::from_mode(0o751)).unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        fs::File::options()
            .write(true)
            .open(tree.join("a/b/f"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        symlink("/nowhere", tree.join("dangling")).unwrap();
        let mut data = Vec::new();
        pack(&tree, "tree", false, &mut data).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let target = dst.path().join("copy");
        unpack(
            &data[..],
            &Unpack {
                target: &target,
                top: "tree",
                max_bytes: 1 << 20,
            },
        )
        .unwrap();
        let f = target.join("a/b/f");
        assert_eq!(fs::read(&f).unwrap(), b"hello");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o751
        );
        assert_eq!(fs::metadata(&f).unwrap().modified().unwrap(), old);
        assert_eq!(
            fs::read_link(target.join("dangling")).unwrap(),
            Path::new("/nowhere")
        );
    }
}
