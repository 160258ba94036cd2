//! Small file-system helpers shared by the host modules.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Replaces `path` with `bytes` atomically: a crash leaves either the old
/// or the new content, never a mix. The file is private (0600).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = private_options().create(true).truncate(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates a new private (0600) file; an existing one is an error, so
/// nothing planted at `path` is ever written through.
pub fn create_private(path: &Path) -> io::Result<fs::File> {
    private_options().create_new(true).open(path)
}

/// Opens `path` for writing, creating it private (0600) if it is missing;
/// existing content is kept.
pub fn open_private(path: &Path) -> io::Result<fs::File> {
    private_options().create(true).truncate(false).open(path)
}

fn private_options() -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    options.write(true).mode(0o600);
    options
}

/// Creates `path` (and missing parents) as a directory only its owner can
/// enter, and checks that an existing one is ours, a real directory and
/// private: a shared parent such as `/tmp` must not let another user plant
/// a symlink or a readable directory there.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(io::Error::other(format!(
            "{} belongs to another user",
            path.display()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/file");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn private_files_are_0600_and_never_reused_when_created_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot.log");
        create_private(&path).unwrap().write_all(b"log").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(
            create_private(&path).is_err(),
            "an existing file was reused"
        );
        open_private(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"log", "open_private truncated");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user.toml");
        fs::write(&path, b"old").unwrap();
        // Block the temporary file the write needs, as a crash or a full
        // disk would stop it half way.
        let tmp = dir
            .path()
            .join(format!(".user.toml.{}.tmp", std::process::id()));
        fs::create_dir(&tmp).unwrap();
        assert!(write_atomic(&path, b"new").is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn private_dir_is_0700_and_refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("p");
        fs::create_dir(&private).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&private).unwrap();
        assert_eq!(fs::metadata(&private).unwrap().mode() & 0o777, 0o700);
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&private, &link).unwrap();
        assert!(create_private_dir(&link).is_err());
    }
}
