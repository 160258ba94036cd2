//! The asset manifest: which kernel, initramfs and root filesystem a build
//! of Capsem boots, pinned by BLAKE3 hash and size.
//!
//! `cargo xtask build-assets` writes it next to the assets; the `capsem`
//! binary compiles it in, so the hashes it trusts cannot be changed without
//! rebuilding it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Name of the manifest file in an asset directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Version of the manifest format.
pub const MANIFEST_FORMAT: u32 = 1;

/// One pinned file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetEntry {
    /// File name inside the asset directory.
    pub file: String,
    /// Lower-case hex BLAKE3 of the whole file.
    pub blake3: String,
    /// Size in bytes.
    pub size: u64,
}

/// The three files a VM boots from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Uncompressed kernel (`vmlinux`), booted through its PVH entry.
    pub kernel: AssetEntry,
    /// Initramfs holding the agent as `/init`.
    pub initramfs: AssetEntry,
    /// Read-only root filesystem image.
    pub rootfs: AssetEntry,
    /// The kernel's `.config`, kept for inspection (not booted, not pinned).
    pub kernel_config: String,
}

impl Manifest {
    /// Parses a manifest.
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The pinned files with their role names.
    pub fn entries(&self) -> [(&'static str, &AssetEntry); 3] {
        [
            ("kernel", &self.kernel),
            ("initramfs", &self.initramfs),
            ("rootfs", &self.rootfs),
        ]
    }
}

/// The asset set a build uses: `current.json` in the asset cache, written by
/// `cargo xtask build-assets` and compiled into `capsem`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentAssets {
    /// Directory holding the files the manifest names.
    pub dir: PathBuf,
    /// Their pinned hashes.
    pub manifest: Manifest,
}

impl CurrentAssets {
    /// Parses `current.json`.
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}
