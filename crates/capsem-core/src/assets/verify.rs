//! Checking assets against the manifest before every boot.
//!
//! Hashing a root filesystem of hundreds of MiB on every run would cost a
//! noticeable part of a cold start, so a file whose identity is unchanged
//! since it was last hashed is trusted: device, inode, size, mtime and
//! *ctime*. The ctime cannot be set by user space and changes on every write
//! (and on `touch`), so even a byte flip that restores size and mtime is
//! caught.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::manifest::{AssetEntry, Manifest};
use crate::fsutil::write_atomic;

/// Files whose ctime is younger than this are re-hashed on every run.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// An asset that cannot be booted.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// The file is not there.
    #[error("the {role} asset is missing: {path}")]
    Missing {
        /// kernel, initramfs or rootfs.
        role: &'static str,
        /// Where it was expected.
        path: PathBuf,
    },
    /// The file's size or hash differs from the manifest compiled into capsem.
    #[error(
        "the {role} asset {path} does not match this capsem build (BLAKE3 {actual}, expected {expected}); refusing to boot it"
    )]
    Mismatch {
        /// kernel, initramfs or rootfs.
        role: &'static str,
        /// The file.
        path: PathBuf,
        /// Hash (or size) the manifest pins.
        expected: String,
        /// Hash (or size) found.
        actual: String,
    },
    /// The file could not be read.
    #[error("reading the {role} asset {path}: {source}")]
    Io {
        /// kernel, initramfs or rootfs.
        role: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// An asset that matched the manifest, still open: the VM is given this
/// very file description, so what was checked is what boots, whatever
/// happens to the path afterwards.
#[derive(Debug)]
pub struct VerifiedFile {
    /// Where it was found (for messages).
    pub path: PathBuf,
    /// The open file that was hashed.
    pub file: File,
}

/// Assets that matched the manifest.
#[derive(Debug)]
pub struct VerifiedAssets {
    /// The kernel.
    pub kernel: VerifiedFile,
    /// The initramfs.
    pub initramfs: VerifiedFile,
    /// The root filesystem image.
    pub rootfs: VerifiedFile,
}

/// What identified a file when it was last hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileIdentity {
    fn of(meta: &fs::Metadata) -> Self {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    identity: FileIdentity,
    blake3: String,
}

/// Hashes of files keyed by path, valid while their identity is unchanged.
#[derive(Debug, Default, Serialize, Deserialize)]
struct HashCache {
    files: BTreeMap<PathBuf, CacheEntry>,
}

/// Verifies every asset of `manifest` in `dir`. With `cache_path`, files
/// whose identity is unchanged since they were last hashed are trusted and
/// the cache is updated; a missing or unreadable cache only costs time.
/// Without it, every file is hashed.
pub fn verify(
    manifest: &Manifest,
    dir: &Path,
    cache_path: Option<&Path>,
) -> Result<VerifiedAssets, AssetError> {
    let mut cache = HashCache::load(cache_path);
    let mut changed = false;
    let mut files = Vec::with_capacity(3);
    for (role, entry) in manifest.entries() {
        let path = dir.join(&entry.file);
        let (file, updated) = verify_one(role, entry, &path, &mut cache)?;
        changed |= updated;
        files.push(VerifiedFile { path, file });
    }
    if changed {
        cache.save(cache_path);
    }
    let [kernel, initramfs, rootfs]: [VerifiedFile; 3] = files.try_into().expect("three assets");
    Ok(VerifiedAssets {
        kernel,
        initramfs,
        rootfs,
    })
}

/// Verifies one file of `role` at `path` against `entry` (whose `file` is
/// ignored), trusting it as [`verify`] does while its identity is unchanged.
pub fn verify_file(
    role: &'static str,
    entry: &AssetEntry,
    path: &Path,
    cache_path: &Path,
) -> Result<VerifiedFile, AssetError> {
    let mut cache = HashCache::load(Some(cache_path));
    let (file, changed) = verify_one(role, entry, path, &mut cache)?;
    if changed {
        cache.save(Some(cache_path));
    }
    Ok(VerifiedFile {
        path: path.to_owned(),
        file,
    })
}

impl HashCache {
    /// The cache at `path`; empty if there is none or it cannot be read.
    fn load(path: Option<&Path>) -> Self {
        path.and_then(|path| fs::read(path).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Saves the cache; a failure only costs a hash next time.
    fn save(&self, path: Option<&Path>) {
        let Some(path) = path else { return };
        let saved = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|json| write_atomic(path, &json));
        if let Err(e) = saved {
            tracing::debug!(
                "could not save the asset hash cache {}: {e}",
                path.display()
            );
        }
    }
}

impl VerifiedAssets {
    /// The same open files again, for a second VM.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        let clone = |f: &VerifiedFile| -> std::io::Result<VerifiedFile> {
            Ok(VerifiedFile {
                path: f.path.clone(),
                file: f.file.try_clone()?,
            })
        };
        Ok(VerifiedAssets {
            kernel: clone(&self.kernel)?,
            initramfs: clone(&self.initramfs)?,
            rootfs: clone(&self.rootfs)?,
        })
    }
}

/// Opens and checks one file; returns it and whether the cache changed.
fn verify_one(
    role: &'static str,
    entry: &AssetEntry,
    path: &Path,
    cache: &mut HashCache,
) -> Result<(File, bool), AssetError> {
    let io_err = |source: std::io::Error| AssetError::Io {
        role,
        path: path.to_owned(),
        source,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(AssetError::Missing {
                role,
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(io_err(e)),
    };
    let meta = file.metadata().map_err(io_err)?;
    let mismatch = |expected: String, actual: String| AssetError::Mismatch {
        role,
        path: path.to_owned(),
        expected,
        actual,
    };
    if !meta.is_file() || meta.size() != entry.size {
        return Err(mismatch(
            format!("{} ({} bytes)", entry.blake3, entry.size),
            format!("unknown ({} bytes)", meta.size()),
        ));
    }
    let identity = FileIdentity::of(&meta);
    if let Some(known) = cache.files.get(path)
        && known.identity == identity
        && known.blake3 == entry.blake3
    {
        return Ok((file, false));
    }
    let actual = hash_reader(&mut file).map_err(io_err)?;
    if actual != entry.blake3 {
        cache.files.remove(path);
        return Err(mismatch(entry.blake3.clone(), actual));
    }
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    // A file changed within the timestamp granularity of the hash could be
    // changed again without its ctime moving (the "racy git" problem): hash
    // it again next time rather than trust its identity.
    let age = SystemTime::now()
        .duration_since(ctime_of(&meta))
        .unwrap_or_default();
    if age < RACY_WINDOW {
        return Ok((file, false));
    }
    cache.files.insert(
        path.to_owned(),
        CacheEntry {
            identity,
            blake3: actual,
        },
    );
    Ok((file, true))
}

fn ctime_of(meta: &fs::Metadata) -> SystemTime {
    let since_epoch = Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec().max(0) as u32);
    SystemTime::UNIX_EPOCH + since_epoch
}

/// BLAKE3 of a file, as lower-case hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    hash_reader(&mut File::open(path)?)
}

/// BLAKE3 of everything `reader` yields, as lower-case hex.
fn hash_reader(reader: &mut impl std::io::Read) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(reader)?;
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        manifest: Manifest,
        cache: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut entries = Vec::new();
        for (name, content) in [("k", &b"kernel"[..]), ("i", b"initramfs"), ("r", b"rootfs")] {
            let path = dir.path().join(name);
            fs::write(&path, content).unwrap();
            entries.push(AssetEntry {
                file: name.into(),
                blake3: hash_file(&path).unwrap(),
                size: content.len() as u64,
            });
        }
        let [kernel, initramfs, rootfs]: [AssetEntry; 3] = entries.try_into().unwrap();
        let cache = dir.path().join("cache.json");
        Fixture {
            manifest: Manifest {
                format: 1,
                kernel,
                initramfs,
                rootfs,
                kernel_config: "config".into(),
            },
            dir,
            cache,
        }
    }

    /// Waits until files written now are old enough to be cached.
    fn age_ctime(path: &Path) {
        let ctime = ctime_of(&fs::metadata(path).unwrap());
        let age = SystemTime::now().duration_since(ctime).unwrap_or_default();
        std::thread::sleep(RACY_WINDOW.saturating_sub(age) + Duration::from_millis(50));
    }

    #[test]
    fn matching_assets_verify_and_are_cached() {
        let f = fixture();
        age_ctime(&f.dir.path().join("r"));
        verify(&f.manifest, f.dir.path(), Some(&f.cache)).unwrap();
        let cache: HashCache = serde_json::from_slice(&fs::read(&f.cache).unwrap()).unwrap();
        assert_eq!(cache.files.len(), 3);
        verify(&f.manifest, f.dir.path(), Some(&f.cache)).unwrap();
    }

    #[test]
    fn a_file_changed_just_now_is_not_cached() {
        let f = fixture();
        verify(&f.manifest, f.dir.path(), Some(&f.cache)).unwrap();
        assert!(!f.cache.exists(), "racy entries were cached");
    }

    #[test]
    fn a_flipped_byte_with_same_size_and_mtime_is_caught_after_caching() {
        let f = fixture();
        let path = f.dir.path().join("r");
        age_ctime(&path);
        verify(&f.manifest, f.dir.path(), Some(&f.cache)).unwrap();
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        fs::write(&path, b"rootfS").unwrap();
        let file = fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(mtime).unwrap();
        let err = verify(&f.manifest, f.dir.path(), Some(&f.cache)).unwrap_err();
        assert!(
            matches!(&err, AssetError::Mismatch { role: "rootfs", .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&f.manifest.rootfs.blake3));
    }

    #[test]
    fn missing_and_resized_assets_are_named() {
        let f = fixture();
        fs::remove_file(f.dir.path().join("i")).unwrap();
        let err = verify(&f.manifest, f.dir.path(), Some(&f.cache)).unwrap_err();
        assert!(matches!(
            err,
            AssetError::Missing {
                role: "initramfs",
                ..
            }
        ));
        fs::write(f.dir.path().join("i"), b"initramfs+").unwrap();
        let err = verify(&f.manifest, f.dir.path(), Some(&f.cache)).unwrap_err();
        assert!(err.to_string().contains("10 bytes"), "{err}");
    }

    #[test]
    fn a_corrupt_cache_file_only_costs_a_rehash() {
        let f = fixture();
        fs::write(&f.cache, b"{not json").unwrap();
        verify(&f.manifest, f.dir.path(), Some(&f.cache)).unwrap();
    }
}
