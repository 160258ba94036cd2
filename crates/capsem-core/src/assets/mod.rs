//! Boot assets: the pinned manifest and its verification.

pub mod manifest;
pub mod verify;

pub use manifest::{AssetEntry, CurrentAssets, MANIFEST_FILE, Manifest};
pub use verify::{AssetError, VerifiedAssets, VerifiedFile, hash_file, verify, verify_file};
