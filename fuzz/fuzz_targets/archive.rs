//! A guest's archive unpacked on the host (`capsem cp NAME:PATH DEST`).
#![no_main]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use capsem_service::archive::{Unpack, unpack};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out");
    let spec = Unpack { target: &target, top: "out", max_bytes: 1 << 20 };
    let result = unpack(data, &spec);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    match result {
        // A refused archive leaves nothing.
        Err(_) => assert!(names.is_empty(), "{names:?}"),
        Ok(_) => {
            assert_eq!(names, ["out"]);
            check_tree(&target);
        }
    }
});

/// Only files, directories and symlinks, none with setid bits.
fn check_tree(path: &Path) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    let kind = meta.file_type();
    assert!(kind.is_file() || kind.is_dir() || kind.is_symlink(), "{path:?}");
    if !kind.is_symlink() {
        assert_eq!(meta.mode() & 0o7000, 0, "{path:?}");
    }
    if kind.is_dir() {
        for entry in std::fs::read_dir(path).unwrap().flatten() {
            check_tree(&entry.path());
        }
    }
}
