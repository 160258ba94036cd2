//! What a sandbox changed in its workspace: the guest's overlay upper
//! layer (exported as a tar archive, see
//! [`HostToGuest::ExportWorkspace`](capsem_proto::HostToGuest::ExportWorkspace))
//! compared with the project as it is on the host.
//!
//! The archive comes from the guest and is hostile: every entry's path is
//! checked (normal UTF-8 components under `files/`), devices, FIFOs and
//! hard links are refused, symlinks that point out of the project are
//! refused, files the guest could not see (`workspace.exclude`) may not be
//! written, and nothing is unpacked: the archive is only read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use capsem_proto::workspace::{BUNDLE_ENTRY, CHANGES_FILES, OPAQUE_MARKER, WHITEOUT_PREFIX};
use rustix::fs::{FileType, OFlags};
use serde::{Deserialize, Serialize};

use super::tree::{Tree, join};
use super::{Excludes, WorkspaceError};

/// Most entries of the project under one deleted directory that are
/// listed; beyond, the deletion is refused rather than walked forever.
pub const MAX_WALK: usize = 1 << 20;

/// Paths whose change would run code on the host when the user next works
/// on the project (git hooks, direnv, editor tasks, CI).
const RUNS_CODE: [&str; 5] = [
    ".git/hooks/",
    ".git/config",
    ".envrc",
    ".vscode/",
    ".github/workflows/",
];

/// Git's own files, applied only on request (`--include-git-internals`);
/// the rest of `.git` is never applied as files.
const GIT_INTERNALS: [&str; 2] = [".git/hooks/", ".git/config"];

/// The record kept with a session that had a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mounted {
    /// The project directory on the host.
    pub root: PathBuf,
    /// Its name in the guest (`/root/NAME`).
    pub name: String,
    /// When the guest first saw it (ns since the epoch): a host file
    /// changed after this conflicts with the guest's change.
    pub mounted_at_ns: i64,
    /// `workspace.exclude` at the time.
    pub exclude: Vec<String>,
}

/// A file as one side has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// `file`, `dir` or `symlink`.
    pub kind: NodeKind,
    /// Permission bits (of a file or directory).
    pub mode: u32,
    /// Size in bytes (of a file).
    pub size: u64,
    /// BLAKE3 of the content (of a file), hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// The target (of a symlink).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The kinds of [`Node`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symlink.
    Symlink,
}

/// What happened to one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// New in the sandbox.
    Added,
    /// Content, target or mode changed.
    Modified,
    /// Gone in the sandbox.
    Deleted,
    /// Moved from [`Change::from`], content unchanged.
    Renamed,
}

/// One change of the sandbox to the project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The path under the project.
    pub path: String,
    /// What happened.
    pub change: ChangeKind,
    /// The old path of a rename.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The project's file (none when added).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Node>,
    /// The sandbox's file (none when deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Node>,
    /// Why the user should look twice (it runs code on the host, a new
    /// executable bit, a setuid bit that will be dropped).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// Git's own file: applied only with `--include-git-internals`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub git_internal: bool,
}

/// A change that will never be applied, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The entry's path as the archive gives it.
    pub path: String,
    /// Why.
    pub why: String,
}

/// Everything a sandbox changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// The changes, by path.
    pub changes: Vec<Change>,
    /// What the archive held that will not be applied.
    pub refused: Vec<Refusal>,
    /// Changes under `.git` other than hooks and config (objects, refs,
    /// the index): never applied as files.
    pub git_files: usize,
    /// Whether the sandbox made commits (a bundle `capsem apply` fetches
    /// as a branch).
    pub commits: bool,
}

/// An entry of the upper layer.
#[derive(Debug, Clone)]
enum Upper {
    Node(Node),
    Whiteout,
}

/// Reads the archive at `archive` and compares it with the project.
pub fn compare(archive: &Path, mounted: &Mounted) -> Result<Changes, WorkspaceError> {
    let read_err = |source| WorkspaceError::Archive {
        path: archive.to_owned(),
        source,
    };
    let tree = Tree::open_root(&mounted.root).map_err(|source| WorkspaceError::Open {
        path: mounted.root.clone(),
        source,
    })?;
    let excludes = Excludes::new(&mounted.exclude)?;
    let file = File::open(archive).map_err(read_err)?;
    let layer = read_upper(file).map_err(read_err)?;
    let (upper, opaque, mut refused) = (layer.entries, layer.opaque, layer.refused);
    let mut out = Changes {
        commits: layer.commits,
        ..Changes::default()
    };
    let mut deleted: BTreeMap<String, Node> = BTreeMap::new();
    let mut added: BTreeMap<String, Node> = BTreeMap::new();
    let mut modified: Vec<(String, Node, Node)> = Vec::new();

    // What the guest could not see, it cannot have deleted.
    let hidden = |p: &str| excludes.hides(p.as_bytes());
    let in_upper = |p: &str| upper.contains_key(p);
    let walk = |dir: &str, keep: &dyn Fn(&str) -> bool, deleted: &mut _, refused: &mut _| {
        walk_lower(&tree, dir, keep, &hidden, deleted, refused)
    };
    for dir in &opaque {
        walk(dir, &in_upper, &mut deleted, &mut refused);
    }
    for (path, entry) in &upper {
        if excludes.hides(path.as_bytes()) {
            refused.push(Refusal {
                path: path.clone(),
                why: "excluded from the workspace (workspace.exclude): the guest never saw it"
                    .into(),
            });
            continue;
        }
        let lower = lower_node(&tree, path);
        match (entry, lower) {
            (Upper::Whiteout, Some(before)) => {
                if before.kind == NodeKind::Dir {
                    walk(path, &|_| false, &mut deleted, &mut refused);
                }
                deleted.insert(path.clone(), before);
            }
            (Upper::Whiteout, None) => {}
            (Upper::Node(after), None) => {
                added.insert(path.clone(), after.clone());
            }
            (Upper::Node(after), Some(before)) => {
                if before.kind != after.kind {
                    if before.kind == NodeKind::Dir {
                        walk(path, &in_upper, &mut deleted, &mut refused);
                    }
                    deleted.insert(path.clone(), before);
                    added.insert(path.clone(), after.clone());
                } else if !same(&before, after) {
                    modified.push((path.clone(), before, after.clone()));
                }
            }
        }
    }
    // A directory the sandbox made only to hold new files is implied by
    // them; an empty one, or one that replaced something, is a change.
    let parents: BTreeSet<String> = added
        .keys()
        .filter_map(|p| p.rsplit_once('/').map(|(d, _)| d.to_owned()))
        .collect();
    added.retain(|p, n| n.kind != NodeKind::Dir || !parents.contains(p) || deleted.contains_key(p));
    pair_renames(&mut deleted, &mut added, &mut out);
    for (path, node) in deleted {
        out.changes
            .push(change(path, ChangeKind::Deleted, Some(node), None));
    }
    for (path, node) in added {
        out.changes
            .push(change(path, ChangeKind::Added, None, Some(node)));
    }
    for (path, before, after) in modified {
        out.changes.push(change(
            path,
            ChangeKind::Modified,
            Some(before),
            Some(after),
        ));
    }
    refuse_escaping_links(&mut out, &mut refused);
    let git_files = out.changes.len();
    out.changes
        .retain(|c| !c.path.starts_with(".git/") || c.git_internal);
    out.git_files = git_files - out.changes.len();
    out.changes.sort_by(|a, b| a.path.cmp(&b.path));
    out.refused = refused;
    Ok(out)
}

/// Whether the sandbox's node is the project's: setuid, setgid and
/// sticky bits never reach the project, so they are no difference.
fn same(before: &Node, after: &Node) -> bool {
    let plain = |n: &Node| Node {
        mode: n.mode & 0o777,
        ..n.clone()
    };
    plain(before) == plain(after)
}

fn change(path: String, kind: ChangeKind, before: Option<Node>, after: Option<Node>) -> Change {
    let mut flags = Vec::new();
    if RUNS_CODE
        .iter()
        .any(|p| path == p.trim_end_matches('/') || path.starts_with(p))
    {
        flags.push("runs code on the host".to_owned());
    }
    if let Some(after) = &after {
        let was_exec = before.as_ref().is_some_and(|b| b.mode & 0o111 != 0);
        if after.kind == NodeKind::File && after.mode & 0o111 != 0 && !was_exec {
            flags.push("new executable bit".to_owned());
        }
        if after.mode & 0o6000 != 0 {
            flags.push("setuid/setgid bit, dropped when applied".to_owned());
        }
    }
    let git_internal = GIT_INTERNALS
        .iter()
        .any(|p| path == p.trim_end_matches('/') || path.starts_with(p));
    Change {
        path,
        change: kind,
        from: None,
        before,
        after,
        flags,
        git_internal,
    }
}

/// A deleted file and an added one with the same content (and no other
/// file with it) are a rename.
fn pair_renames(
    deleted: &mut BTreeMap<String, Node>,
    added: &mut BTreeMap<String, Node>,
    out: &mut Changes,
) {
    let by_hash = |map: &BTreeMap<String, Node>| {
        let mut hashes: HashMap<String, Vec<String>> = HashMap::new();
        for (path, node) in map {
            if let Some(hash) = &node.blake3 {
                hashes.entry(hash.clone()).or_default().push(path.clone());
            }
        }
        hashes
    };
    let (gone, new) = (by_hash(deleted), by_hash(added));
    for (hash, from) in gone {
        let (Some(to), [from]) = (new.get(&hash), from.as_slice()) else {
            continue;
        };
        let [to] = to.as_slice() else { continue };
        let (Some(before), Some(after)) = (deleted.remove(from), added.remove(to)) else {
            continue;
        };
        let mut renamed = change(to.clone(), ChangeKind::Renamed, Some(before), Some(after));
        renamed.from = Some(from.clone());
        out.changes.push(renamed);
    }
}

/// Symlinks whose target leaves the project (absolute, or more `..` than
/// the link is deep) are refused: on the host they would point at the
/// user's files.
fn refuse_escaping_links(out: &mut Changes, refused: &mut Vec<Refusal>) {
    out.changes.retain(|c| {
        let Some(target) = c.after.as_ref().and_then(|n| n.target.as_deref()) else {
            return true;
        };
        if stays_inside(&c.path, target) {
            return true;
        }
        refused.push(Refusal {
            path: c.path.clone(),
            why: format!("a symlink to {target}, outside the project"),
        });
        false
    });
}

/// Whether the symlink at `link` pointing at `target` resolves, lexically,
/// inside the project.
pub fn stays_inside(link: &str, target: &str) -> bool {
    let mut depth = link.matches('/').count() as i64;
    for component in Path::new(target).components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

struct UpperLayer {
    entries: BTreeMap<String, Upper>,
    opaque: BTreeSet<String>,
    refused: Vec<Refusal>,
    commits: bool,
}

/// The upper layer's entries by path, its opaque directories, and what
/// was refused.
fn read_upper(file: File) -> io::Result<UpperLayer> {
    let mut upper = BTreeMap::new();
    let mut opaque = BTreeSet::new();
    let mut refused = Vec::new();
    let mut commits = false;
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if raw == BUNDLE_ENTRY {
            commits = true;
            continue;
        }
        let Some(path) = project_path(&entry.path_bytes()) else {
            refused.push(Refusal {
                path: raw,
                why: "not a plain path under the project".into(),
            });
            continue;
        };
        if path.is_empty() {
            continue;
        }
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", &path));
        if name == OPAQUE_MARKER {
            opaque.insert(dir.to_owned());
            continue;
        }
        if let Some(gone) = name.strip_prefix(WHITEOUT_PREFIX) {
            let gone = if dir.is_empty() {
                gone.to_owned()
            } else {
                format!("{dir}/{gone}")
            };
            upper.insert(gone, Upper::Whiteout);
            continue;
        }
        let header = entry.header();
        let mode = header.mode()? & 0o7777;
        let node = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let (size, hash) = hash(&mut entry)?;
                file_node(mode, size, hash)
            }
            tar::EntryType::Directory => dir_node(mode),
            tar::EntryType::Symlink => match entry.link_name_bytes() {
                Some(target) => link_node(String::from_utf8_lossy(&target).into_owned()),
                None => continue,
            },
            other => {
                refused.push(Refusal {
                    path,
                    why: format!("a {other:?} entry: only files, directories and symlinks"),
                });
                continue;
            }
        };
        upper.insert(path, Upper::Node(node));
    }
    Ok(UpperLayer {
        entries: upper,
        opaque,
        refused,
        commits,
    })
}

/// The path under the project of an archive entry (`files/PATH`), if it
/// is one: UTF-8, normal components only.
fn project_path(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let text = text.trim_end_matches('/');
    let rest = text.strip_prefix(CHANGES_FILES)?;
    if rest.is_empty() {
        return Some(String::new());
    }
    let rest = rest.strip_prefix('/')?;
    capsem_proto::workspace::validate_path(rest.as_bytes()).ok()?;
    Some(rest.to_owned())
}

fn hash(mut reader: impl Read) -> io::Result<(u64, String)> {
    let mut hasher = blake3::Hasher::new();
    let size = io::copy(&mut reader, &mut hasher)?;
    Ok((size, hasher.finalize().to_hex().to_string()))
}

fn file_node(mode: u32, size: u64, hash: String) -> Node {
    Node {
        kind: NodeKind::File,
        mode,
        size,
        blake3: Some(hash),
        target: None,
    }
}

fn dir_node(mode: u32) -> Node {
    Node {
        kind: NodeKind::Dir,
        mode,
        size: 0,
        blake3: None,
        target: None,
    }
}

fn link_node(target: String) -> Node {
    Node {
        kind: NodeKind::Symlink,
        mode: 0o777,
        size: target.len() as u64,
        blake3: None,
        target: Some(target),
    }
}

/// The project's file at `path`, as a [`Node`]; none if absent or not a
/// file, directory or symlink.
pub fn lower_node(tree: &Tree, path: &str) -> Option<Node> {
    let st = tree.lstat(path.as_bytes()).ok()??;
    let mode = st.st_mode & 0o7777;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => Some(dir_node(mode)),
        FileType::Symlink => {
            let fd = tree.open(path.as_bytes(), OFlags::PATH).ok()?;
            let target = rustix::fs::readlinkat(&fd, c"", Vec::new()).ok()?;
            Some(link_node(target.to_string_lossy().into_owned()))
        }
        FileType::RegularFile => {
            let fd = tree
                .open(path.as_bytes(), OFlags::RDONLY | OFlags::NONBLOCK)
                .ok()?;
            let (size, hash) = hash(File::from(fd)).ok()?;
            Some(file_node(mode, size, hash))
        }
        _ => None,
    }
}

/// Adds everything the project has under `dir` to `deleted`, except what
/// `keep` claims and what is `hidden` (with all under it).
fn walk_lower(
    tree: &Tree,
    dir: &str,
    keep: &dyn Fn(&str) -> bool,
    hidden: &dyn Fn(&str) -> bool,
    deleted: &mut BTreeMap<String, Node>,
    refused: &mut Vec<Refusal>,
) {
    let mut pending = vec![dir.to_owned()];
    let mut seen = 0usize;
    while let Some(at) = pending.pop() {
        let Ok(fd) = tree.open(at.as_bytes(), OFlags::RDONLY | OFlags::DIRECTORY) else {
            continue;
        };
        let Ok(entries) = rustix::fs::Dir::read_from(&fd) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            seen += 1;
            if seen > MAX_WALK {
                refused.push(Refusal {
                    path: dir.to_owned(),
                    why: format!("deletes more than {MAX_WALK} files"),
                });
                return;
            }
            let Ok(name) = std::str::from_utf8(name) else {
                continue;
            };
            let path = String::from_utf8_lossy(&join(at.as_bytes(), name.as_bytes())).into_owned();
            if hidden(&path) {
                continue;
            }
            let Some(node) = lower_node(tree, &path) else {
                continue;
            };
            if node.kind == NodeKind::Dir {
                pending.push(path.clone());
            }
            if !keep(&path) {
                deleted.insert(path, node);
            }
        }
    }
}

/// The contents of the archive's regular files at `paths`, read in one
/// pass; each at most `limit` bytes (longer ones are left out).
pub fn contents(
    archive: &Path,
    paths: &BTreeSet<String>,
    limit: u64,
) -> Result<HashMap<String, Vec<u8>>, WorkspaceError> {
    let read_err = |source| WorkspaceError::Archive {
        path: archive.to_owned(),
        source,
    };
    let file = File::open(archive).map_err(read_err)?;
    let mut found = HashMap::new();
    let mut tar = tar::Archive::new(io::BufReader::new(file));
    for entry in tar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let Some(path) = project_path(&entry.path_bytes()) else {
            continue;
        };
        let regular = entry.header().entry_type().is_file();
        if regular && paths.contains(&path) && entry.size() <= limit {
            let mut data = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut data).map_err(read_err)?;
            found.insert(path, data);
        }
    }
    Ok(found)
}

/// The project's file at `path`, up to `limit` bytes.
pub fn lower_contents(tree: &Tree, path: &str, limit: u64) -> Option<Vec<u8>> {
    let fd = tree
        .open(path.as_bytes(), OFlags::RDONLY | OFlags::NONBLOCK)
        .ok()?;
    let mut data = Vec::new();
    File::from(fd).take(limit + 1).read_to_end(&mut data).ok()?;
    (data.len() as u64 <= limit).then_some(data)
}
