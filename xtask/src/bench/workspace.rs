//! Workspaces: what mounting costs as the project grows, `git status` and
//! a sequential read through the FUSE export against the guest's own
//! storage, and `capsem diff` / `apply` of many changed files.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::sandboxes::timed;
use super::{capsem_cmd, median_of, ratio, stats};

/// Files in the small and the large tree.
const SMALL: usize = 10;
const LARGE: usize = 100_000;
/// Files of the repository `git status` runs in.
const REPO_FILES: usize = 20_000;
/// Size of the file read sequentially, in MiB.
const READ_MIB: usize = 256;
/// Files changed for `diff` and `apply`.
const CHANGED: usize = 1000;

/// All the workspace figures.
pub fn measure(capsem: &Path, scratch: &Path, runs: usize) -> Result<Value> {
    let home = scratch.join("workspace-home");
    let trees = scratch.join("trees");
    let small = tree(&trees.join("small"), SMALL)?;
    let large = tree(&trees.join("large"), LARGE)?;
    let time_mount = |dir: &Path| -> Result<Vec<f64>> {
        (0..runs)
            .map(|_| {
                timed(
                    capsem,
                    &home,
                    &["-q", "run", "-w", &path(dir), "--", "true"],
                )
            })
            .collect()
    };
    let (small_ms, large_ms) = (time_mount(&small)?, time_mount(&large)?);
    let bare = (0..runs)
        .map(|_| timed(capsem, &home, &["-q", "run", "--", "true"]))
        .collect::<Result<Vec<_>>>()?;
    let (small_ms, large_ms) = (stats(small_ms), stats(large_ms));
    let mount = json!({
        "files": [SMALL, LARGE],
        "run_true_no_workspace_ms": stats(bare),
        "run_true_small_ms": small_ms,
        "run_true_large_ms": large_ms,
        "ratio_large_to_small": ratio(median_of(&large_ms), median_of(&small_ms)),
    });
    let repo = git_repo(&trees.join("repo"))?;
    let git = git_status(capsem, &home, &repo, runs)?;
    let read = sequential_read(capsem, &home, &trees.join("read"), runs)?;
    let changes = diff_and_apply(capsem, &home, &trees.join("changes"), runs)?;
    Ok(json!({ "mount": mount, "git_status": git, "sequential_read": read, "diff_apply": changes }))
}

fn path(dir: &Path) -> String {
    dir.display().to_string()
}

/// A tree of `files` small files, 1000 to a directory.
fn tree(dir: &Path, files: usize) -> Result<std::path::PathBuf> {
    for i in 0..files {
        let sub = dir.join(format!("d{}", i / 1000));
        if i % 1000 == 0 {
            fs::create_dir_all(&sub)?;
        }
        fs::write(sub.join(format!("f{i}.txt")), format!("file {i}\n"))?;
    }
    Ok(dir.to_owned())
}

fn git_repo(dir: &Path) -> Result<std::path::PathBuf> {
    let repo = tree(dir, REPO_FILES)?;
    for args in [
        &["init", "-q"][..],
        &["add", "."],
        &[
            "-c",
            "gc.auto=0",
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "commit",
            "-qm",
            "bench",
        ],
        // One pack, so the guest's clone for the comparison reads one file.
        &["repack", "-adq"],
    ] {
        let status = Command::new("git").args(args).current_dir(&repo).status()?;
        if !status.success() {
            bail!("git {args:?} failed in {}", repo.display());
        }
    }
    Ok(repo)
}

/// Milliseconds a guest command takes, timed in the guest.
const TIME: &str =
    "t() { s=$(date +%s%N); \"$@\" >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }";

/// `git status` through the workspace, then in a clone of it on the
/// guest's own storage (tmpfs), both timed in the guest.
fn git_status(capsem: &Path, home: &Path, repo: &Path, runs: usize) -> Result<Value> {
    let script = format!(
        "{TIME}; t git status --porcelain; git clone -q --no-hardlinks . /tmp/copy; \
         cd /tmp/copy; t git status --porcelain"
    );
    let (mut through, mut local) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let out = guest(capsem, home, repo, &script)?;
        let [a, b] = two_numbers(&out)?;
        through.push(a);
        local.push(b);
    }
    let (through, local) = (stats(through), stats(local));
    Ok(json!({
        "files": REPO_FILES,
        "workspace_ms": through,
        "guest_tmpfs_ms": local,
        "ratio": ratio(median_of(&through), median_of(&local)),
    }))
}

/// MiB/s reading a file through the workspace against reading as many
/// bytes of the rootfs's largest file (an AI CLI's binary), both with
/// `dd` (plain reads: `cat` may splice).
fn sequential_read(capsem: &Path, home: &Path, dir: &Path, runs: usize) -> Result<Value> {
    fs::create_dir_all(dir)?;
    let block: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut big = fs::File::create(dir.join("big"))?;
    for _ in 0..READ_MIB {
        std::io::Write::write_all(&mut big, &block)?;
    }
    let script = format!(
        "{TIME}; t dd if=big of=/dev/null bs=1M; \
         f=$(find /usr -xdev -type f -size +{READ_MIB}M | head -1); \
         t dd if=$f of=/dev/null bs=1M count={READ_MIB}"
    );
    let (mut through, mut rootfs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let out = guest(capsem, home, dir, &script)?;
        let [a, b] = two_numbers(&out)?;
        through.push(READ_MIB as f64 / (a / 1e3));
        rootfs.push(READ_MIB as f64 / (b / 1e3));
    }
    let (through, rootfs) = (stats(through), stats(rootfs));
    Ok(json!({
        "mib": READ_MIB,
        "workspace_mib_per_s": through,
        "rootfs_mib_per_s": rootfs,
        "ratio": ratio(median_of(&through), median_of(&rootfs)),
    }))
}

/// `capsem diff --stat` and `capsem apply --yes` after a run changed
/// [`CHANGED`] files, host process start to exit.
fn diff_and_apply(capsem: &Path, home: &Path, dir: &Path, runs: usize) -> Result<Value> {
    let (mut diff, mut apply) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let project = tree(&dir.join(format!("p{i}")), CHANGED)?;
        guest(
            capsem,
            home,
            &project,
            "for f in d0/*.txt; do echo changed >> $f; done",
        )?;
        diff.push(timed(capsem, home, &["diff", "--stat"])?);
        apply.push(timed(capsem, home, &["apply", "--yes"])?);
    }
    Ok(json!({ "files": CHANGED, "diff_stat_ms": stats(diff), "apply_ms": stats(apply) }))
}

/// Runs `script` in a fresh VM whose workspace is `dir`; its stdout.
fn guest(capsem: &Path, home: &Path, dir: &Path, script: &str) -> Result<String> {
    let out = capsem_cmd(
        capsem,
        home,
        &["-q", "run", "-w", &path(dir), "--", "bash", "-c", script],
    )
    .stdin(Stdio::null())
    .output()
    .context("running capsem")?;
    if !out.status.success() {
        bail!(
            "in the guest, `{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn two_numbers(out: &str) -> Result<[f64; 2]> {
    let numbers: Vec<f64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    match numbers.as_slice() {
        [a, b] => Ok([*a, *b]),
        _ => bail!("expected two timings from the guest, got {out:?}"),
    }
}
