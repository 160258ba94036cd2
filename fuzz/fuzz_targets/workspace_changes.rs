//! A guest's workspace changes (the overlay's upper layer, as a tar
//! archive) compared with a project and applied to it: whatever the
//! archive holds, nothing lands outside the project and no setid bit or
//! device appears in it.
#![no_main]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use capsem_core::workspace::apply::{Selection, apply};
use capsem_core::workspace::changes::{Mounted, compare};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let top = tempfile::tempdir().unwrap();
    let root = top.path().join("project");
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join("src/a"), "a").unwrap();
    std::fs::write(top.path().join("outside"), "outside").unwrap();
    let archive = top.path().join("changes.tar");
    std::fs::write(&archive, data).unwrap();
    let mounted = Mounted {
        root: root.clone(),
        name: "project".into(),
        mounted_at_ns: i64::MAX,
        exclude: vec![".env".into()],
    };
    if let Ok(changes) = compare(&archive, &mounted) {
        let _ = apply(&changes, &archive, &mounted, &Selection::default());
    }
    let mut names: Vec<_> = std::fs::read_dir(top.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["changes.tar", "outside", "project"]);
    assert_eq!(std::fs::read(top.path().join("outside")).unwrap(), b"outside");
    check_tree(&root);
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
