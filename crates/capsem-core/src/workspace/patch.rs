//! Changes as the user reads them: a unified diff for text, size and
//! hash for binary files, and a line for modes, symlinks and directories.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::Path;

use similar::TextDiff;

use super::WorkspaceError;
use super::changes::{self, Change, ChangeKind, Changes, Mounted, Node, NodeKind};
use super::tree::Tree;

/// Files larger than this are summarised, not diffed.
pub const MAX_TEXT_BYTES: u64 = 8 << 20;

/// Writes `changes` (from the archive at `archive`) as a patch.
pub fn write_patch(
    out: &mut dyn Write,
    changes: &Changes,
    archive: &Path,
    mounted: &Mounted,
) -> Result<(), WorkspaceError> {
    let tree = Tree::open_root(&mounted.root).map_err(|source| WorkspaceError::Open {
        path: mounted.root.clone(),
        source,
    })?;
    let wanted: BTreeSet<String> = changes
        .changes
        .iter()
        .filter(|c| c.after.as_ref().is_some_and(|n| n.kind == NodeKind::File))
        .map(|c| c.path.clone())
        .collect();
    let new = changes::contents(archive, &wanted, MAX_TEXT_BYTES)?;
    let written = |e: io::Error| WorkspaceError::Write {
        path: "stdout".into(),
        source: e,
    };
    for change in &changes.changes {
        let old_path = change.from.as_deref().unwrap_or(&change.path);
        let old = change
            .before
            .as_ref()
            .filter(|n| n.kind == NodeKind::File)
            .and_then(|_| changes::lower_contents(&tree, old_path, MAX_TEXT_BYTES));
        let new = new.get(&change.path).map(Vec::as_slice);
        write_change(out, change, old.as_deref(), new).map_err(written)?;
    }
    for refusal in &changes.refused {
        writeln!(out, "# refused: {}: {}", refusal.path, refusal.why).map_err(written)?;
    }
    if changes.commits {
        writeln!(
            out,
            "# new commits: capsem apply brings them back as a branch capsem/ID"
        )
        .map_err(written)?;
    }
    if changes.git_files > 0 {
        writeln!(
            out,
            "# {} changes inside .git (objects, refs, index) are not applied as files",
            changes.git_files
        )
        .map_err(written)?;
    }
    Ok(())
}

fn write_change(
    out: &mut dyn Write,
    change: &Change,
    old: Option<&[u8]>,
    new: Option<&[u8]>,
) -> io::Result<()> {
    let path = &change.path;
    let from = change.from.as_deref().unwrap_or(path);
    writeln!(out, "diff --capsem a/{from} b/{path}")?;
    for flag in &change.flags {
        writeln!(out, "# flagged: {flag}")?;
    }
    if change.git_internal {
        writeln!(out, "# applied only with --include-git-internals")?;
    }
    let (before, after) = (change.before.as_ref(), change.after.as_ref());
    match change.change {
        ChangeKind::Added => writeln!(out, "new {}", describe(after))?,
        ChangeKind::Deleted => writeln!(out, "deleted {}", describe(before))?,
        ChangeKind::Renamed => writeln!(out, "rename from {from}\nrename to {path}")?,
        ChangeKind::Modified => {
            if let (Some(b), Some(a)) = (before, after)
                && b.mode != a.mode
            {
                writeln!(out, "old mode {:o}\nnew mode {:o}", b.mode, a.mode)?;
            }
        }
    }
    let is_file = |n: Option<&Node>| n.is_none_or(|n| n.kind == NodeKind::File);
    if change.change == ChangeKind::Renamed || !is_file(before) || !is_file(after) {
        return Ok(());
    }
    let text = |data: Option<&[u8]>| match data {
        None => Some(String::new()),
        Some(bytes) if !bytes.contains(&0) => String::from_utf8(bytes.to_vec()).ok(),
        Some(_) => None,
    };
    let old_known = before.is_none() || old.is_some();
    let new_known = after.is_none() || new.is_some();
    match (text(old), text(new)) {
        (Some(old_text), Some(new_text)) if old_known && new_known => {
            if old_text != new_text {
                let diff = TextDiff::from_lines(&old_text, &new_text);
                let (a, b) = (format!("a/{from}"), format!("b/{path}"));
                write!(
                    out,
                    "{}",
                    diff.unified_diff().context_radius(3).header(&a, &b)
                )?;
            }
        }
        _ => writeln!(
            out,
            "Binary files a/{from} and b/{path} differ ({} -> {})",
            summary(before),
            summary(after)
        )?,
    }
    Ok(())
}

fn describe(node: Option<&Node>) -> String {
    match node {
        Some(n) if n.kind == NodeKind::Symlink => {
            format!("symlink -> {}", n.target.as_deref().unwrap_or_default())
        }
        Some(n) if n.kind == NodeKind::Dir => format!("directory mode {:o}", n.mode),
        Some(n) => format!("file mode {:o}", n.mode),
        None => "nothing".to_owned(),
    }
}

fn summary(node: Option<&Node>) -> String {
    match node {
        Some(n) => format!(
            "{} bytes, blake3 {}",
            n.size,
            n.blake3.as_deref().map_or("?", |h| &h[..16])
        ),
        None => "none".to_owned(),
    }
}
