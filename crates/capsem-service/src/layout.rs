//! Where a sandbox lives on the host: `$CAPSEM_HOME/sandboxes/NAME/`.
//!
//! | file | what |
//! |---|---|
//! | `sandbox.json` | how it was created ([`Meta`]) |
//! | `home.img` | its disk (sparse ext4), `/root` in the guest |
//! | `supervisor.sock` | its supervisor's API while it runs |
//! | `supervisor.lock` | held by its supervisor for as long as it lives |
//! | `supervisor.log` | what its supervisors said, boot failures included |
//! | `last-session` | the session of its latest boot |
//! | `workspace/` | its workspace's records and kept changes |

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How a sandbox was created; written once, at create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Its name (the directory's).
    pub name: String,
    /// When, ms since the Unix epoch.
    pub created_ms: i64,
    /// vCPUs.
    pub cpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Disk size in GiB.
    pub disk_gib: u32,
    /// Environment of every command.
    pub env: Vec<(String, String)>,
    /// Its workspace, if it has one.
    #[serde(default)]
    pub workspace: Option<PathBuf>,
}

/// The sandboxes' parent directory.
pub fn root(home: &Path) -> PathBuf {
    home.join("sandboxes")
}

/// The service's runtime directory (socket, lock, log), mode 0700.
pub fn run_dir(home: &Path) -> PathBuf {
    home.join("run")
}

/// The service's socket.
pub fn service_socket(home: &Path) -> PathBuf {
    run_dir(home).join("capsem.sock")
}

/// One sandbox's directory.
#[derive(Debug, Clone)]
pub struct SandboxDir {
    name: String,
    path: PathBuf,
}

impl SandboxDir {
    /// The directory of `name` (checked by [`crate::name::check`]).
    pub fn of(home: &Path, name: &str) -> Self {
        SandboxDir {
            name: name.to_owned(),
            path: root(home).join(name),
        }
    }

    /// The sandbox's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates it, private; fails with `AlreadyExists` when the name is
    /// taken, which makes two racing creates of one name pick one winner.
    pub fn create(&self) -> io::Result<()> {
        let parent = self.path.parent().unwrap_or(Path::new("."));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
        fs::DirBuilder::new().mode(0o700).create(&self.path)
    }

    /// `sandbox.json`.
    pub fn meta_path(&self) -> PathBuf {
        self.path.join("sandbox.json")
    }

    /// Its disk.
    pub fn disk(&self) -> PathBuf {
        self.path.join("home.img")
    }

    /// Its VM's memory and device state while it is suspended.
    pub fn suspended_state(&self) -> PathBuf {
        self.path.join("suspended.state")
    }

    /// Its supervisor's socket.
    pub fn socket(&self) -> PathBuf {
        self.path.join("supervisor.sock")
    }

    /// Held by its supervisor while it lives ([`crate::lock`]).
    pub fn lock(&self) -> PathBuf {
        self.path.join("supervisor.lock")
    }

    /// Its supervisors' log.
    pub fn log(&self) -> PathBuf {
        self.path.join("supervisor.log")
    }

    fn last_session_path(&self) -> PathBuf {
        self.path.join("last-session")
    }

    /// Reads `sandbox.json`.
    pub fn meta(&self) -> io::Result<Meta> {
        let text = fs::read_to_string(self.meta_path())?;
        serde_json::from_str(&text).map_err(io::Error::other)
    }

    /// Writes `sandbox.json` (private, new).
    pub fn write_meta(&self, meta: &Meta) -> io::Result<()> {
        let text = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
        write_private(&self.meta_path(), &text)
    }

    /// The session of its latest boot.
    pub fn last_session(&self) -> Option<String> {
        let id = fs::read_to_string(self.last_session_path()).ok()?;
        Some(id.trim().to_owned()).filter(|id| !id.is_empty())
    }

    /// Records the session of this boot.
    pub fn set_last_session(&self, id: &str) -> io::Result<()> {
        let tmp = self.path.join("last-session.tmp");
        let _ = fs::remove_file(&tmp);
        write_private(&tmp, id.as_bytes())?;
        fs::rename(tmp, self.last_session_path())
    }
}

fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

/// Makes `dir` (and its parents) with mode 0700, and insists the existing
/// one is ours and private: a socket there is only as safe as its
/// directory.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not a directory of this user", dir.display()),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
