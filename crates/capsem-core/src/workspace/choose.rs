//! Which directory a run works on, and which may never be one.

use std::path::{Path, PathBuf};

use super::WorkspaceError;

/// Directories under `$HOME` that hold the user's keys: a workspace may
/// neither contain them nor lie inside them.
const KEY_DIRS: [&str; 4] = [".ssh", ".gnupg", ".aws", ".capsem"];

/// A project directory a run may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// The directory, absolute and without symlinks.
    pub root: PathBuf,
    /// What it is called in the guest: `/root/NAME`.
    pub name: String,
}

/// The workspace of a run: `explicit` (`-w DIR`) if given, otherwise, when
/// `auto`, the git work tree that contains `cwd` (none outside one).
/// `home` is the user's home and `capsem_home` Capsem's state directory;
/// both, `/`, and whatever holds or lies in the user's key directories are
/// refused.
pub fn choose(
    explicit: Option<&Path>,
    auto: bool,
    cwd: &Path,
    home: Option<&Path>,
    capsem_home: &Path,
) -> Result<Option<Workspace>, WorkspaceError> {
    let root = match explicit {
        Some(dir) => canonical(&cwd.join(dir))?,
        None if auto => match git_work_tree(&canonical(cwd)?) {
            Some(root) => root,
            None => return Ok(None),
        },
        None => return Ok(None),
    };
    refuse_sensitive(&root, home, capsem_home)?;
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "workspace".to_owned());
    Ok(Some(Workspace { root, name }))
}

fn canonical(dir: &Path) -> Result<PathBuf, WorkspaceError> {
    let open = |source| WorkspaceError::Open {
        path: dir.to_owned(),
        source,
    };
    let root = dir.canonicalize().map_err(open)?;
    if !root.is_dir() {
        return Err(open(std::io::Error::other("not a directory")));
    }
    Ok(root)
}

/// The nearest directory at or above `dir` with a `.git` in it.
fn git_work_tree(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|d| d.join(".git").symlink_metadata().is_ok())
        .map(Path::to_path_buf)
}

fn refuse_sensitive(
    root: &Path,
    home: Option<&Path>,
    capsem_home: &Path,
) -> Result<(), WorkspaceError> {
    let refuse = |why: String| {
        Err(WorkspaceError::Refused {
            path: root.to_owned(),
            why,
        })
    };
    if root == Path::new("/") {
        return refuse("it is the whole file system".to_owned());
    }
    let home = home.and_then(|h| h.canonicalize().ok());
    if home.as_deref() == Some(root) {
        return refuse("it is your home directory; pick a project inside it".to_owned());
    }
    let capsem_home = capsem_home
        .canonicalize()
        .unwrap_or_else(|_| capsem_home.to_owned());
    let mut secrets: Vec<PathBuf> = home
        .iter()
        .flat_map(|h| KEY_DIRS.iter().map(move |d| h.join(d)))
        .collect();
    secrets.push(capsem_home);
    for secret in secrets {
        if secret.starts_with(root) {
            return refuse(format!("it contains {}", secret.display()));
        }
        if root.starts_with(&secret) {
            return refuse(format!("it is inside {}", secret.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_git_work_tree_around_the_directory_is_chosen() {
        let top = tempfile::tempdir().unwrap();
        let project = top.path().join("app");
        std::fs::create_dir_all(project.join(".git")).unwrap();
        std::fs::create_dir_all(project.join("src/deep")).unwrap();
        let home = top.path().join("home");
        let found = choose(None, true, &project.join("src/deep"), Some(&home), &home)
            .unwrap()
            .unwrap();
        assert_eq!(found.root, project.canonicalize().unwrap());
        assert_eq!(found.name, "app");
        let outside = top.path().join("plain");
        std::fs::create_dir(&outside).unwrap();
        assert!(
            choose(None, true, &outside, Some(&home), &home)
                .unwrap()
                .is_none()
        );
        assert!(
            choose(None, false, &project, Some(&home), &home)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn home_root_and_key_directories_are_refused() {
        let top = tempfile::tempdir().unwrap();
        let home = top.path().join("home");
        let capsem = home.join(".capsem");
        for dir in [".ssh/x", ".capsem/sessions", "src/app"] {
            std::fs::create_dir_all(home.join(dir)).unwrap();
        }
        let pick = |dir: &Path| choose(Some(dir), false, top.path(), Some(&home), &capsem);
        for refused in [
            Path::new("/"),
            &home,
            top.path(),
            &home.join(".ssh/x"),
            &home.join(".capsem/sessions"),
        ] {
            let err = pick(refused).unwrap_err();
            assert!(
                matches!(err, WorkspaceError::Refused { .. }),
                "{refused:?}: {err}"
            );
        }
        assert!(pick(&home.join("src/app")).unwrap().is_some());
        assert!(matches!(
            pick(&home.join("missing")),
            Err(WorkspaceError::Open { .. })
        ));
    }
}
