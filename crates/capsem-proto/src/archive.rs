//! The two ends of a copy (`capsem cp`) share these: a tree packed as a
//! tar stream under its own name, and the scratch directory an unpacked
//! copy is built in before it is renamed into place.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Archives `src` under `name` into `out`; with `follow`, symlinks are
/// packed as what they point to, otherwise as symlinks.
pub fn pack(src: &Path, name: &str, follow: bool, out: impl Write) -> io::Result<()> {
    let meta = if follow {
        fs::metadata(src)
    } else {
        fs::symlink_metadata(src)
    }
    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(follow);
    if meta.is_dir() {
        builder.append_dir_all(name, src)?;
    } else {
        builder.append_path_with_name(src, name)?;
    }
    builder.into_inner()?.flush()
}

/// A new private directory in `parent` for a copy being unpacked.
pub fn scratch_dir(parent: &Path) -> io::Result<PathBuf> {
    for n in 0..1000u32 {
        let dir = parent.join(format!(".capsem-cp-{}-{n}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no scratch directory could be made"))
}
