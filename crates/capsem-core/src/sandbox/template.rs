//! Boot templates: a VM booted once, to the point where its agent waits
//! for the host's hello, and snapshotted; later runs resume the snapshot
//! instead of booting.
//!
//! A template is keyed by everything that shapes the snapshot: the asset
//! hashes, the monitor's build, the accelerator, the vCPUs, the RAM, the
//! root mode, and for a named sandbox the size of its disk (the template
//! VM boots with a blank disk of that size, which the guest probes but
//! never mounts; the resumed guest mounts the sandbox's own). It is an asset like the others: its state file is
//! BLAKE3-hashed when built, and verified (with the assets' identity cache)
//! before each use, so a tampered template is refused like a tampered
//! rootfs. It is built under a lock, in a temporary directory renamed into
//! place, so concurrent runs build it once and a crash leaves no half
//! template. The newest [`KEEP`] templates are kept.
//!
//! What each restored VM must not share with its siblings (the kernel's
//! RNG state, machine-id, wall clock, channel) is made fresh after the
//! resume, by the handshake: see `capsem-agent`'s `identity` module.

use std::fs;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::vm::RunningVm;
use super::{Notice, RunError, Sandbox};
use crate::assets::{AssetEntry, VerifiedAssets, VerifiedFile};
use crate::channel::{self, ChannelError};
use crate::fsutil::{create_private, create_private_dir, write_atomic};
use crate::session::log_tail;
use crate::vm::qemu::qmp::{self, Qmp, QmpError};
use crate::vm::{Accel, DiskFiles, VmConfig, VmError};

/// The template's name in asset errors.
pub const ROLE: &str = "boot template";
/// Version of the template layout; a template of another is rebuilt.
const FORMAT: u32 = 1;
/// The template's record.
const META_FILE: &str = "template.json";
/// The snapshot: RAM and device state, as QEMU wrote it.
const STATE_FILE: &str = "state";
/// The template VM's console, kept for diagnosis.
const BOOT_LOG: &str = "boot.log";
/// The blank disk a named sandbox's template boots with; removed once the
/// snapshot is taken.
const BLANK_DISK: &str = "disk";
/// Templates kept; older ones are removed when one is built.
pub const KEEP: usize = 4;
/// Longest a snapshot may take to write.
const SAVE_LIMIT: Duration = Duration::from_secs(60);
/// Lines of the template VM's boot log quoted when its build fails.
const LOG_LINES: usize = 20;

/// What a template was made from; any change needs a new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// BLAKE3 of the kernel, initramfs and rootfs.
    pub assets: [String; 3],
    /// The monitor's build ([`crate::vm::Backend::identity`]).
    pub monitor: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// vCPUs.
    pub cpus: u32,
    /// Guest RAM.
    pub memory_mib: u32,
    /// `overlay` or `read-only`.
    pub root: String,
    /// The size of a named sandbox's disk; `None` without one.
    pub home_disk_bytes: Option<u64>,
}

impl Key {
    /// The template's directory name: a hash of the key.
    pub fn id(&self) -> String {
        let json = serde_json::to_vec(self).expect("a key serializes");
        blake3::hash(&json).to_hex()[..16].to_owned()
    }
}

/// A template's record, next to its state file.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    format: u32,
    key: Key,
    state: AssetEntry,
}

/// A template could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file of the template could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The monitor could not start.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The template VM stopped before its agent was ready.
    #[error("the template VM stopped during boot; its boot log {log}:\n{tail}")]
    Died {
        /// The boot log.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// The template VM's agent did not say hello in time.
    #[error("the template VM's agent did not answer within {0} s")]
    TimedOut(u32),
    /// The agent's hello was wrong.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The snapshot failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

impl Sandbox {
    /// The key of the template for VMs of this sandbox under `accel`, with
    /// a disk of `home_disk_bytes` or none.
    pub fn template_key(&self, accel: Accel, home_disk_bytes: Option<u64>) -> std::io::Result<Key> {
        Ok(Key {
            assets: [
                self.manifest.kernel.blake3.clone(),
                self.manifest.initramfs.blake3.clone(),
                self.manifest.rootfs.blake3.clone(),
            ],
            monitor: self.backend.identity()?,
            accel: accel.name().to_owned(),
            cpus: self.vm.cpus,
            memory_mib: self.vm.memory_mib,
            root: self.vm.root.name().to_owned(),
            home_disk_bytes,
        })
    }

    /// The verified state file of the template for `accel` and a disk of
    /// `home_disk_bytes` (or none), built first
    /// (saying so) if there is none. `Ok(None)`: it could not be built;
    /// the notice says why and the VM boots cold. A template whose state
    /// does not match its record is an error.
    pub(super) async fn template(
        &self,
        accel: Accel,
        assets: &VerifiedAssets,
        home_disk_bytes: Option<u64>,
        notice: &Notice,
    ) -> Result<Option<VerifiedFile>, RunError> {
        let key = self
            .template_key(accel, home_disk_bytes)
            .map_err(|source| RunError::Io {
                what: "identifying the VM monitor".into(),
                source,
            })?;
        let dir = self.templates.join(key.id());
        if let Some(found) = self.find_template(&dir, &key)? {
            return Ok(Some(found));
        }
        let cold = |e: BuildError| {
            notice(&format!(
                "could not build the boot template ({e}); booting cold"
            ));
            Ok(None)
        };
        let _lock = match lock(&self.templates, &key.id()).await {
            Ok(lock) => lock,
            Err(e) => return cold(e),
        };
        // Another run may have built it while we waited.
        if let Some(found) = self.find_template(&dir, &key)? {
            return Ok(Some(found));
        }
        notice(
            "building the boot template for these assets and VM shape; later runs start from it",
        );
        if let Err(e) = self.build_template(accel, assets, &key, &dir).await {
            return cold(e);
        }
        prune(&self.templates, KEEP);
        self.find_template(&dir, &key)
    }

    /// The template in `dir` if it is one for `key`, verified.
    fn find_template(&self, dir: &Path, key: &Key) -> Result<Option<VerifiedFile>, RunError> {
        let Some(meta) = fs::read(dir.join(META_FILE))
            .ok()
            .and_then(|json| serde_json::from_slice::<Meta>(&json).ok())
            .filter(|meta| meta.format == FORMAT && meta.key == *key)
        else {
            return Ok(None);
        };
        let cache = self.home.join("asset-hashes.json");
        let state = dir.join(STATE_FILE);
        let verified = crate::assets::verify_file(ROLE, &meta.state, &state, &cache)?;
        // Its age is its last use, for pruning.
        let _ = fs::File::open(dir).and_then(|d| d.set_modified(std::time::SystemTime::now()));
        Ok(Some(verified))
    }

    /// Boots a VM, snapshots it once its agent is waiting for the host,
    /// and installs the snapshot in `dir`.
    async fn build_template(
        &self,
        accel: Accel,
        assets: &VerifiedAssets,
        key: &Key,
        dir: &Path,
    ) -> Result<(), BuildError> {
        let tmp = self
            .templates
            .join(format!(".{}.{}.tmp", key.id(), std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        create_private_dir(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        let result = self.snapshot_into(accel, assets, key, &tmp).await;
        let installed = result.and_then(|()| {
            let _ = fs::remove_dir_all(dir);
            fs::rename(&tmp, dir).map_err(io_err(format!("installing {}", dir.display())))
        });
        if installed.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        installed
    }

    async fn snapshot_into(
        &self,
        accel: Accel,
        assets: &VerifiedAssets,
        key: &Key,
        tmp: &Path,
    ) -> Result<(), BuildError> {
        let (channel_host, channel_vm) = StdUnixStream::pair().map_err(io_err("socket pair"))?;
        let (console_host, console_vm) = StdUnixStream::pair().map_err(io_err("socket pair"))?;
        let (control_host, control_vm) = StdUnixStream::pair().map_err(io_err("socket pair"))?;
        let log = tmp.join(BOOT_LOG);
        let create = |name: &str| {
            let path = tmp.join(name);
            create_private(&path).map_err(io_err(format!("creating {}", path.display())))
        };
        let state = create(STATE_FILE)?;
        let home_disk = key
            .home_disk_bytes
            .map(|bytes| blank_disk(&tmp.join(BLANK_DISK), bytes))
            .transpose()?;
        let config = VmConfig {
            name: "capsem-template".into(),
            assets: assets.try_clone().map_err(io_err("reopening the assets"))?,
            accel,
            cpus: self.vm.cpus,
            memory_mib: self.vm.memory_mib,
            root: self.vm.root,
            home_disk,
            channel: channel_vm.into(),
            console: console_vm.into(),
            control: Some(control_vm.into()),
            incoming: None,
            monitor_log: create("qemu.log")?,
        };
        let handle = self.backend.launch(config)?;
        let vm = RunningVm::new(handle, console_host, create(BOOT_LOG)?)
            .map_err(io_err("reading the template VM's console"))?;
        let saved = async {
            let mut socket =
                super::to_tokio(channel_host).map_err(io_err("preparing the channel"))?;
            let secs = self.vm.boot_timeout_secs;
            tokio::select! {
                hello = tokio::time::timeout(
                    Duration::from_secs(secs.into()),
                    channel::read_hello(&mut socket),
                ) => hello.map_err(|_| BuildError::TimedOut(secs))??,
                _ = vm.wait() => return Err(BuildError::Died {
                    tail: log_tail(&log, LOG_LINES),
                    log: log.clone(),
                }),
            };
            let file = state.try_clone().map_err(io_err("the state file"))?;
            tokio::task::spawn_blocking(move || {
                Qmp::connect(control_host, qmp::REPLY_TIMEOUT)?.save(&file, SAVE_LIMIT)
            })
            .await
            .map_err(|e| io_err("snapshotting")(std::io::Error::other(e)))??;
            Ok(())
        }
        .await;
        vm.kill();
        vm.wait().await;
        let _ = fs::remove_file(tmp.join(BLANK_DISK));
        saved?;
        state.sync_all().map_err(io_err("writing the snapshot"))?;
        let size = state.metadata().map_err(io_err("the snapshot"))?.len();
        let mut hasher = blake3::Hasher::new();
        let state = fs::File::open(tmp.join(STATE_FILE)).map_err(io_err("reading the snapshot"))?;
        hasher
            .update_reader(state)
            .map_err(io_err("hashing the snapshot"))?;
        let meta = Meta {
            format: FORMAT,
            key: key.clone(),
            state: AssetEntry {
                file: STATE_FILE.into(),
                blake3: hasher.finalize().to_hex().to_string(),
                size,
            },
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| io_err("the record")(e.into()))?;
        write_atomic(&tmp.join(META_FILE), &json).map_err(io_err("writing the record"))
    }
}

/// A sparse, unformatted disk of `bytes`, open both ways.
fn blank_disk(path: &Path, bytes: u64) -> Result<DiskFiles, BuildError> {
    let what = || format!("creating {}", path.display());
    create_private(path)
        .and_then(|file| file.set_len(bytes))
        .map_err(io_err(what()))?;
    DiskFiles::open(path).map_err(io_err(what()))
}

/// Holds an exclusive lock on the template `id` until dropped.
async fn lock(root: &Path, id: &str) -> Result<fs::File, BuildError> {
    create_private_dir(root).map_err(io_err(format!("creating {}", root.display())))?;
    let path = root.join(format!(".{id}.lock"));
    let file = crate::fsutil::open_private(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    tokio::task::spawn_blocking(move || {
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(file)
    })
    .await
    .map_err(|e| io_err("locking the template")(std::io::Error::other(e)))?
    .map_err(io_err(format!("locking {}", path.display())))
}

/// Removes all but the `keep` most recently used templates, and what
/// crashed builds left behind. Best effort: a template in use stays open
/// in its VM, so removing it loses nothing.
fn prune(root: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let mut templates = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let used = entry.metadata().and_then(|m| m.modified()).ok();
        let stale_tmp = name.ends_with(".tmp")
            && used
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(3600));
        if stale_tmp {
            let _ = fs::remove_dir_all(entry.path());
        } else if !name.starts_with('.') && entry.path().is_dir() {
            templates.push((used, entry.path()));
        }
    }
    templates.sort_by_key(|t| std::cmp::Reverse(t.0));
    for (_, old) in templates.into_iter().skip(keep) {
        let _ = fs::remove_dir_all(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key {
            assets: ["k".into(), "i".into(), "r".into()],
            monitor: "qemu:1:2".into(),
            accel: "tcg".into(),
            cpus: 2,
            memory_mib: 1024,
            root: "overlay".into(),
            home_disk_bytes: None,
        }
    }

    #[test]
    fn every_part_of_the_key_names_another_template() {
        let base = key().id();
        assert_eq!(base.len(), 16);
        let variants = [
            Key { cpus: 1, ..key() },
            Key {
                memory_mib: 512,
                ..key()
            },
            Key {
                monitor: "qemu:1:3".into(),
                ..key()
            },
            Key {
                accel: "kvm".into(),
                ..key()
            },
            Key {
                root: "read-only".into(),
                ..key()
            },
            Key {
                assets: ["k".into(), "i".into(), "r2".into()],
                ..key()
            },
            Key {
                home_disk_bytes: Some(1 << 30),
                ..key()
            },
            Key {
                home_disk_bytes: Some(2 << 30),
                ..key()
            },
        ];
        for variant in variants {
            assert_ne!(variant.id(), base, "{variant:?}");
        }
    }

    #[test]
    fn pruning_keeps_the_newest_and_clears_old_leftovers() {
        let root = tempfile::tempdir().unwrap();
        let now = std::time::SystemTime::now();
        for (i, name) in ["a", "b", "c", ".x.1.tmp", ".y.2.tmp"].iter().enumerate() {
            let dir = root.path().join(name);
            fs::create_dir(&dir).unwrap();
            let age = match *name {
                ".x.1.tmp" => Duration::from_secs(7200),
                _ => Duration::from_secs(60 * i as u64),
            };
            fs::File::open(&dir)
                .unwrap()
                .set_modified(now - age)
                .unwrap();
        }
        fs::write(root.path().join(".a.lock"), "").unwrap();
        prune(root.path(), 2);
        let mut left: Vec<String> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // The newest two, a build that may still run, and the lock.
        assert_eq!(left, [".a.lock", ".y.2.tmp", "a", "b"]);
    }
}
