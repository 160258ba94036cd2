//! Commits made in the sandbox come back as a branch, not as files: the
//! guest bundles what its `HEAD` has beyond the project's refs, and
//! `capsem apply` fetches that bundle into the project as
//! `capsem/ID`, with git checking every object.

use std::io;
use std::path::Path;
use std::process::Command;

use capsem_proto::workspace::BUNDLE_ENTRY;

use super::WorkspaceError;

/// The guest command (for `bash -c SCRIPT capsem-bundle NAME`) that writes
/// the bundle beside the workspace's layers, or nothing when there are no
/// new commits. The guest is free to forge it: the host's git verifies it.
pub const BUNDLE_SCRIPT: &str = r#"
cd "/root/$1" 2>/dev/null && [ -e .git ] || exit 0
out=/run/capsem-workspace/commits.bundle
lower=/run/capsem-workspace/lower/.git
rm -f "$out"
git rev-parse -q --verify HEAD >/dev/null || exit 0
not=$( { git --git-dir="$lower" for-each-ref --format='%(objectname)'
         git --git-dir="$lower" rev-parse -q --verify HEAD; } 2>/dev/null | sed 's/^/^/')
git bundle create -q "$out" HEAD $not 2>/dev/null || rm -f "$out"
exit 0
"#;

/// Fetches the bundle in `archive` into the git repository at `root` as
/// `refs/heads/BRANCH`; returns the branch's commit, or `None` when the
/// archive has no bundle. `scratch` is a private directory for the bundle.
pub fn fetch_commits(
    archive: &Path,
    root: &Path,
    branch: &str,
    scratch: &Path,
) -> Result<Option<String>, WorkspaceError> {
    let read_err = |source| WorkspaceError::Archive {
        path: archive.to_owned(),
        source,
    };
    let bundle = scratch.join("commits.bundle");
    if !extract_bundle(archive, &bundle).map_err(read_err)? {
        return Ok(None);
    }
    let refspec = format!("+HEAD:refs/heads/{branch}");
    let fetched = git(root)
        .args([
            "-c",
            "transfer.fsckObjects=true",
            "-c",
            "fetch.fsckObjects=true",
        ])
        .args(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head"])
        .arg(&bundle)
        .arg(&refspec)
        .output();
    let _ = std::fs::remove_file(&bundle);
    let git_err = |why: String| WorkspaceError::Git(why);
    let fetched = fetched.map_err(|e| git_err(format!("running git: {e}")))?;
    if !fetched.status.success() {
        return Err(git_err(
            String::from_utf8_lossy(&fetched.stderr).trim().to_owned(),
        ));
    }
    let head = git(root)
        .args(["rev-parse", "--verify", &format!("refs/heads/{branch}")])
        .output()
        .map_err(|e| git_err(format!("running git: {e}")))?;
    Ok(Some(
        String::from_utf8_lossy(&head.stdout).trim().to_owned(),
    ))
}

fn git(root: &Path) -> Command {
    let mut git = Command::new("git");
    git.arg("-C").arg(root);
    git
}

/// Copies the archive's bundle to `to`; false when it has none.
fn extract_bundle(archive: &Path, to: &Path) -> io::Result<bool> {
    let mut tar = tar::Archive::new(io::BufReader::new(std::fs::File::open(archive)?));
    for entry in tar.entries()? {
        let mut entry = entry?;
        if &*entry.path_bytes() == BUNDLE_ENTRY.as_bytes() && entry.header().entry_type().is_file()
        {
            let mut out = crate::fsutil::create_private(to)?;
            io::copy(&mut entry, &mut out)?;
            return Ok(true);
        }
    }
    Ok(false)
}
