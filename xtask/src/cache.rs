//! The content-addressed asset cache, outside the clone.
//!
//! Each built artifact lives in `KIND/KEY/`, where KEY hashes every input
//! that can change its bytes (sources, configuration, tool versions, the
//! recipe). A directory exists only once complete: it is built under a
//! temporary name and renamed into place, so an interrupted build is simply
//! rebuilt.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::workspace;

/// The cache root: `$CAPSEM_CACHE_DIR`, else `$XDG_CACHE_HOME/capsem`, else
/// `~/.cache/capsem`. `crates/capsem/build.rs` applies the same rule.
pub fn root() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("CAPSEM_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("capsem")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/capsem")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache/capsem"))
}

/// The file `capsem` compiles in: the current asset set.
pub fn current_json() -> PathBuf {
    root().join("current.json")
}

/// Hashes labelled inputs into a cache key.
pub struct KeyBuilder(blake3::Hasher);

impl KeyBuilder {
    /// A key for artifacts of `kind`, built by recipe `version`.
    pub fn new(kind: &str, version: u32) -> Self {
        let mut builder = KeyBuilder(blake3::Hasher::new());
        builder.add(kind, &version.to_le_bytes());
        builder
    }

    /// Adds one input. Labels and lengths are hashed too, so inputs cannot
    /// run into each other.
    pub fn add(&mut self, label: &str, bytes: &[u8]) -> &mut Self {
        for part in [label.as_bytes(), bytes] {
            self.0.update(&(part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
        self
    }

    /// Adds a file of the workspace: its content, labelled by its path
    /// relative to the workspace, so clones in other places share keys.
    pub fn file(&mut self, path: &Path) -> Result<&mut Self> {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let root = workspace();
        let name = path
            .strip_prefix(&root)
            .unwrap_or(path)
            .display()
            .to_string();
        Ok(self.add(&name, &bytes))
    }

    /// Adds every file under `dir` (in the workspace), in a stable order.
    pub fn tree(&mut self, dir: &Path) -> Result<&mut Self> {
        for file in files_under(dir, &[])? {
            self.file(&file)?;
        }
        Ok(self)
    }

    /// The key: 16 hex digits are plenty to tell builds apart.
    pub fn finish(&self) -> String {
        self.0.finalize().to_hex()[..16].to_owned()
    }
}

/// Every file under `dir`, sorted, leaving out entries named in `skip`.
pub fn files_under(dir: &Path, skip: &[&str]) -> Result<Vec<PathBuf>> {
    fn collect(dir: &Path, skip: &[&str], out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| skip.contains(&n))
            {
                continue;
            }
            if path.is_dir() {
                collect(&path, skip, out)?;
            } else {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    collect(dir, skip, &mut files)?;
    files.sort();
    Ok(files)
}

/// Returns `KIND/KEY` under the cache, building it with `build` when absent.
/// `build` fills the directory it is given.
pub fn get_or_build(
    kind: &str,
    key: &str,
    build: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dir = root().join(kind).join(key);
    if dir.is_dir() {
        return Ok(dir);
    }
    let tmp = root().join(kind).join(format!("{key}.partial"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    build(&tmp)?;
    fs::rename(&tmp, &dir).with_context(|| format!("moving {} into place", dir.display()))?;
    Ok(dir)
}

/// Records `entry` in the file `name` under the cache, for builds and
/// tests run outside `cargo xtask`.
pub fn point(name: &str, entry: &Path) -> Result<()> {
    let pointer = root().join(name);
    let text = entry.display().to_string();
    // Rewriting an unchanged file would make cargo rebuild what reads it.
    if fs::read_to_string(&pointer).ok().as_deref() != Some(text.as_str()) {
        fs::write(&pointer, &text).with_context(|| format!("writing {}", pointer.display()))?;
    }
    Ok(())
}

/// Hard-links `from` to `to` (assets are hundreds of MB), copying when the
/// two are on different filesystems.
pub fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    }
    Ok(())
}

/// Deletes all but the `keep` most recently built entries of each kind,
/// never one in `used`. Every rootfs is hundreds of MB; without this the
/// cache grows by one with every change to an input.
pub fn prune(keep: usize, used: &[&Path]) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for kind in [
        "kernel",
        "initramfs",
        "rootfs",
        "assets",
        "tools",
        "ui",
        "clients",
    ] {
        let Ok(dir) = fs::read_dir(root().join(kind)) else {
            continue;
        };
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && p.extension().is_none_or(|e| e != "partial"))
            .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
            .collect();
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        for (_, path) in entries.into_iter().skip(keep) {
            if used
                .iter()
                .any(|u| u.starts_with(&path) || path.starts_with(u))
            {
                continue;
            }
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_do_not_depend_on_where_the_workspace_is() {
        let file = workspace().join("images/kernel/capsem.config");
        let mut key = KeyBuilder::new("kind", 1);
        key.file(&file).unwrap();
        let mut by_hand = KeyBuilder::new("kind", 1);
        by_hand.add("images/kernel/capsem.config", &fs::read(&file).unwrap());
        assert_eq!(key.finish(), by_hand.finish());
    }

    #[test]
    fn keys_depend_on_every_input_and_its_label() {
        let key = |pairs: &[(&str, &[u8])]| {
            let mut k = KeyBuilder::new("kind", 1);
            for (label, bytes) in pairs {
                k.add(label, bytes);
            }
            k.finish()
        };
        assert_eq!(key(&[("a", b"1")]), key(&[("a", b"1")]));
        assert_ne!(key(&[("a", b"1")]), key(&[("a", b"2")]));
        assert_ne!(key(&[("a", b"1")]), key(&[("b", b"1")]));
        assert_ne!(
            key(&[("a", b"1b"), ("", b"")]),
            key(&[("a", b"1"), ("b", b"")])
        );
        assert_ne!(
            KeyBuilder::new("kind", 1).finish(),
            KeyBuilder::new("kind", 2).finish()
        );
    }
}
