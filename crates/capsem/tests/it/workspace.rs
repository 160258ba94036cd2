//! Workspaces in real VMs: the guest sees the project at once, cannot
//! change one host byte, and its changes reach the project only through
//! `capsem diff` and `capsem apply`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use crate::support::{Capsem, assert_code, stderr, stdout};

/// Every file of `root` (not following symlinks) with its mode and
/// content or target: what "not one host byte changed" compares.
fn snapshot(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut found = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = path.symlink_metadata().unwrap();
            let key = path.strip_prefix(root).unwrap().display().to_string();
            let content = if meta.is_symlink() {
                fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if meta.is_dir() {
                pending.push(path.clone());
                Vec::new()
            } else {
                fs::read(&path).unwrap()
            };
            found.insert(key, (meta.permissions().mode(), content));
        }
    }
    found
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

/// A small git project beside a file that is not part of it.
fn project(top: &Path) -> std::path::PathBuf {
    let root = top.join("app");
    fs::create_dir_all(root.join("src")).unwrap();
    fs::write(top.join("outside"), "not in the project").unwrap();
    fs::write(root.join("README"), "hello\n").unwrap();
    fs::write(root.join("old.txt"), "to be deleted\n").unwrap();
    fs::write(root.join("run.sh"), "echo run\n").unwrap();
    fs::write(root.join("src/a.c"), "int a;\n").unwrap();
    fs::write(root.join(".env"), "TOKEN=host-secret\n").unwrap();
    fs::write(
        root.join("Makefile"),
        "out.txt: src/a.c\n\twc -c src/a.c > out.txt\n",
    )
    .unwrap();
    symlink("../outside", root.join("up")).unwrap();
    symlink("/etc/hostname", root.join("hostname")).unwrap();
    git(&root, &["init", "-q"]);
    git(
        &root,
        &["add", "README", "old.txt", "run.sh", "src", "Makefile"],
    );
    git(&root, &["commit", "-q", "-m", "first"]);
    root
}

#[test]
fn the_guest_works_on_the_project_and_its_changes_come_back_only_when_applied() {
    let capsem = Capsem::new();
    capsem.user_settings("[workspace]\nexclude = \".env\"\n");
    let top = tempfile::tempdir().unwrap();
    let root = project(top.path());
    let before = snapshot(&root);
    let ws = root.to_str().unwrap();
    let script = "pwd; cat README; git status --short; git log --oneline | wc -l; make -s; \
                  echo more >> README; rm old.txt; chmod +x run.sh; mv src/a.c src/b.c; \
                  ln -s README link; mkdir -p d; printf 'x\\0y' > d/bin; \
                  git -c user.name=agent -c user.email=a@sandbox commit -qam 'from the sandbox'; \
                  ls -a | tr '\\n' ' '";
    let out = capsem.run(&["run", "-w", ws, "--", "bash", "-c", script]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.starts_with("/root/app\nhello\n"), "{text}");
    assert!(
        text.contains("?? out.txt") || text.contains("1\n"),
        "{text}"
    );
    assert!(
        !text.contains(".env"),
        "the excluded file was listed: {text}"
    );
    assert!(
        stderr(&out).contains("workspace: ") && stderr(&out).contains("at /root/app (read-only"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        snapshot(&root),
        before,
        "the run changed the host's project"
    );

    let stat = capsem.run(&["diff", "--stat"]);
    assert_code(&stat, 0);
    let stat = stdout(&stat);
    for line in [
        "M README",
        "D old.txt",
        "M run.sh",
        "R src/a.c -> src/b.c",
        "A link",
        "A d/bin",
        "A out.txt",
    ] {
        assert!(
            stat.lines().any(|l| l.starts_with(line)),
            "{line} missing:\n{stat}"
        );
    }
    assert!(stat.contains("new executable bit"), "{stat}");
    let patch = stdout(&capsem.run(&["diff"]));
    assert!(patch.contains("+more"), "{patch}");
    assert!(
        patch.contains("Binary files a/d/bin and b/d/bin differ"),
        "{patch}"
    );
    assert!(
        patch.contains("new mode 100755") || patch.contains("new mode 755"),
        "{patch}"
    );
    let rows = crate::json::check(&capsem, &["diff", "--json"], &crate::json::schemas());
    assert!(
        rows.iter().any(|r| r["data"]["path"] == "README"),
        "{rows:?}"
    );

    // Without a terminal or --yes nothing is written.
    assert_code(&capsem.run(&["apply"]), 125);
    assert_eq!(snapshot(&root), before);
    // A file the user edited since the run saw it is a conflict: nothing
    // is written until they force it.
    fs::write(root.join("README"), "edited on the host\n").unwrap();
    let conflict = capsem.run(&["apply", "--yes"]);
    assert_code(&conflict, 125);
    assert!(
        stderr(&conflict).contains("conflict: README"),
        "{}",
        stderr(&conflict)
    );
    assert!(
        root.join("old.txt").exists(),
        "a conflicting apply wrote something"
    );
    let applied = capsem.run(&["apply", "--yes", "--force"]);
    assert_code(&applied, 0);
    // The guest's commit is a branch, its objects checked by git.
    let branch = format!("capsem/{}", capsem.last_session_id());
    let log = Command::new("git")
        .args(["log", "--format=%s", "-1", &branch])
        .current_dir(&root)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&log.stdout),
        "from the sandbox\n",
        "{applied:?}"
    );
    assert_eq!(
        fs::read_to_string(root.join("README")).unwrap(),
        "hello\nmore\n"
    );
    assert!(!root.join("old.txt").exists() && root.join("src/b.c").exists());
    assert_eq!(fs::read(root.join("d/bin")).unwrap(), b"x\0y");
    assert_eq!(
        fs::read_link(root.join("link")).unwrap(),
        Path::new("README")
    );
    let mode = fs::metadata(root.join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111);
    assert_eq!(
        fs::read_to_string(root.join(".env")).unwrap(),
        "TOKEN=host-secret\n"
    );
    // The session records what was mounted and the apply.
    let id = capsem.last_session_id();
    let schemas = crate::json::schemas();
    let detail = crate::json::check(&capsem, &["sessions", "show", &id, "--json"], &schemas);
    let workspace = &detail[0]["data"]["workspace"];
    assert_eq!(workspace["mounted"]["root"], ws, "{workspace}");
    assert_eq!(workspace["applied"][0]["action"], "apply", "{workspace}");
    let left = stdout(&capsem.run(&["diff", "--stat"]));
    assert!(
        left.lines().all(|l| l.starts_with("  (")),
        "not applied: {left}"
    );
}

#[test]
fn guest_root_cannot_change_or_read_past_the_project() {
    let capsem = Capsem::new();
    capsem.user_settings("[workspace]\nexclude = \".env\"\n");
    let top = tempfile::tempdir().unwrap();
    let root = project(top.path());
    let before = snapshot(&root);
    let lower = "/run/capsem-workspace/lower";
    let script = format!(
        "cat up; cat {lower}/up; cat hostname; cat .env; cat {lower}/.env; \
         mount -o remount,rw {lower}; echo x > {lower}/README; touch {lower}/new; \
         umount /root/app; echo y > /root/app/README; \
         rm -rf {lower}/src; ln {lower}/README /root/hard; echo z >> /root/hard; \
         mount -t fuse -o fd=0,rootmode=40000,user_id=0,group_id=0 x /mnt </dev/fuse; \
         mount --bind /etc {lower}/src; echo w > {lower}/src/hostname; \
         mkdir -p /tmp/b; mount --bind {lower} /tmp/b && echo v > /tmp/b/README; \
         true"
    );
    let out = capsem.run(&[
        "run",
        "-w",
        root.to_str().unwrap(),
        "--",
        "bash",
        "-c",
        &script,
    ]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(
        !text.contains("not in the project"),
        "a symlink led out: {text}"
    );
    assert!(
        !text.contains("host-secret"),
        "an excluded file was read: {text}"
    );
    assert_eq!(
        snapshot(&root),
        before,
        "guest root changed the host's project"
    );
    assert_eq!(
        fs::read_to_string(top.path().join("outside")).unwrap(),
        "not in the project"
    );
}

#[test]
fn home_and_directories_holding_keys_are_refused_before_any_vm_boots() {
    let capsem = Capsem::new();
    let top = tempfile::tempdir().unwrap();
    let home = top.path().join("home");
    fs::create_dir_all(home.join(".ssh")).unwrap();
    for dir in [home.to_str().unwrap(), "/", top.path().to_str().unwrap()] {
        let out = capsem
            .cmd(&["run", "-w", dir, "--", "true"])
            .env("HOME", &home)
            .output()
            .unwrap();
        assert_code(&out, 125);
        assert!(
            stderr(&out).contains("cannot be a workspace"),
            "{}",
            stderr(&out)
        );
    }
    assert!(capsem.sessions().is_empty(), "a VM was booted");
}

#[test]
fn a_named_sandbox_keeps_its_workspace_changes_across_stop_and_start() {
    let service = crate::sandboxes::Service::new();
    let top = tempfile::tempdir().unwrap();
    let root = project(top.path());
    let before = snapshot(&root);
    let ws = root.to_str().unwrap();
    service.ok(&["create", "-n", "feat", "-w", ws]);
    let out = service.ok(&[
        "exec",
        "feat",
        "pwd; cat README; echo sandbox >> README; touch new",
    ]);
    assert_eq!(out, "/root/app\nhello\n");
    let stat = service.ok(&["diff", "--stat", "feat"]);
    assert!(
        stat.contains("M README") && stat.contains("A new"),
        "{stat}"
    );
    service.ok(&["stop", "feat"]);
    service.ok(&["start", "feat"]);
    let out = service.ok(&["exec", "feat", "cat README"]);
    assert_eq!(
        out, "hello\nsandbox\n",
        "the change did not survive a restart"
    );
    let stat = service.ok(&["diff", "--stat", "feat"]);
    assert!(
        stat.contains("M README") && stat.contains("A new"),
        "{stat}"
    );
    assert_eq!(
        snapshot(&root),
        before,
        "the sandbox changed the host's project"
    );
    assert_code(&service.run(&["discard", "feat"]), 125);
    service.ok(&["apply", "--yes", "feat", "README"]);
    assert_eq!(
        fs::read_to_string(root.join("README")).unwrap(),
        "hello\nsandbox\n"
    );
    assert!(
        !root.join("new").exists(),
        "a path not asked for was applied"
    );
}
