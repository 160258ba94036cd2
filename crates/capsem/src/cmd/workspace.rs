//! `capsem diff`, `apply` and `discard`: a run's workspace changes, which
//! reach the project only when the user accepts them; and the choice of a
//! run's workspace.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use capsem_core::paths;
use capsem_core::session::store::Store;
use capsem_core::settings::{Settings, WorkspaceAuto};
use capsem_core::workspace::apply::{self, Outcome, Selection};
use capsem_core::workspace::changes::{self, ChangeKind, Changes, Mounted};
use capsem_core::workspace::stored::ApplyRecord;
use capsem_core::workspace::{Stored, Workspace, patch};
use capsem_core::{WorkspaceSpec, text::visible};
use serde_json::json;

use crate::cli::{ApplyArgs, WorkspaceArgs};
use crate::exit::Failure;
use crate::out::outln;
use crate::terminal;

/// The workspace of a one-shot run of `command`, if it has one.
pub fn for_run(
    args: &WorkspaceArgs,
    command: &[String],
    settings: &Settings,
) -> Result<Option<WorkspaceSpec>, Failure> {
    if args.no_workspace {
        return Ok(None);
    }
    let ws = settings.workspace();
    let ai_cli = command
        .first()
        .is_some_and(|c| super::run::AI_CLIS.contains(&c.as_str()));
    let auto = match ws.auto {
        WorkspaceAuto::AiClis => ai_cli,
        WorkspaceAuto::Always => true,
        WorkspaceAuto::Never => false,
    };
    let cwd =
        std::env::current_dir().map_err(|e| Failure::new(format!("the current directory: {e}")))?;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let chosen = capsem_core::workspace::choose(
        args.workspace.as_deref(),
        auto,
        &cwd,
        home.as_deref(),
        &paths::capsem_home(),
    )
    .map_err(|e| Failure::new(e).hint("pick another directory with -w, or --no-workspace"))?;
    Ok(chosen.map(|workspace| WorkspaceSpec {
        workspace,
        exclude: ws.exclude,
        upper: capsem_proto::workspace::Upper::Memory,
        max_changes_bytes: settings.sandbox().max_copy_bytes,
        records: None,
    }))
}

/// The workspace of the named sandbox in `dir`, whose project is `root`.
pub fn for_sandbox(
    root: &Path,
    dir: &capsem_service::layout::SandboxDir,
    settings: &Settings,
) -> Result<WorkspaceSpec, Failure> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let workspace = capsem_core::workspace::choose(
        Some(root),
        false,
        root,
        home.as_deref(),
        &paths::capsem_home(),
    )
    .map_err(Failure::new)?
    .ok_or_else(|| Failure::new("no workspace"))?;
    Ok(WorkspaceSpec {
        workspace,
        exclude: settings.workspace().exclude,
        upper: capsem_proto::workspace::Upper::Disk,
        max_changes_bytes: settings.sandbox().max_copy_bytes,
        records: Some(dir.path().to_owned()),
    })
}

/// What capsem says on stderr when it mounts `workspace`.
pub fn mounted_notice(workspace: &Workspace) -> String {
    format!(
        "workspace: {} at /root/{} (read-only; changes kept for capsem diff)",
        tilde(&workspace.root),
        workspace.name
    )
}

fn tilde(path: &Path) -> String {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    match home.as_deref().and_then(|h| path.strip_prefix(h).ok()) {
        Some(rest) => format!("~/{}", rest.display()),
        None => path.display().to_string(),
    }
}

/// A session's kept changes.
struct Kept {
    /// A session id, or a sandbox's name.
    id: String,
    stored: Stored,
    mounted: Mounted,
    /// Whether it is a named sandbox's (whose changes live on its disk).
    sandbox: bool,
}

impl Kept {
    fn changes(&self) -> Result<Changes, Failure> {
        changes::compare(&self.stored.archive(), &self.mounted).map_err(Failure::new)
    }
}

/// The named sandbox `given`, or the session `given` (a prefix), or,
/// without either, the newest session whose changes are kept.
fn find(given: Option<&str>) -> Result<Kept, Failure> {
    let home = paths::capsem_home();
    if let Some(name) = given
        && let Some(kept) = sandbox(&home, name)?
    {
        return Ok(kept);
    }
    let id = given;
    let store = Store::open(&home).map_err(Failure::new)?;
    let id = match id {
        Some(prefix) => store.resolve(prefix).map_err(Failure::new)?,
        None => newest_with_changes(&store)?,
    };
    let stored = Stored::new(&store.dir_of(&id));
    let Some(mounted) = stored.mounted() else {
        return Err(Failure::new(format!("session {id} had no workspace")));
    };
    if !stored.has_changes() {
        return Err(Failure::new(format!(
            "session {id} keeps no workspace changes (none were saved, or they were discarded)"
        )));
    }
    Ok(Kept {
        id,
        stored,
        mounted,
        sandbox: false,
    })
}

/// The named sandbox `name`'s changes, brought up to date first when it
/// runs; `None` if there is no such sandbox.
fn sandbox(home: &Path, name: &str) -> Result<Option<Kept>, Failure> {
    let dir = capsem_service::layout::SandboxDir::of(home, name);
    if capsem_service::name::check(name).is_err() || !dir.meta_path().is_file() {
        return Ok(None);
    }
    let stored = Stored::new(dir.path());
    let Some(mounted) = stored.mounted() else {
        return Err(Failure::new(format!("sandbox {name} has no workspace")));
    };
    let path = format!("/v1/sandboxes/{name}/workspace/save");
    let save = async {
        let client = super::sandbox::service().await?;
        client
            .call::<()>(hyper::Method::POST, &path, None::<&()>)
            .await
            .map_err(super::sandbox::api)
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("starting the runtime: {e}")))?
        .block_on(save)?;
    if !stored.has_changes() {
        return Err(Failure::new(format!(
            "sandbox {name} keeps no workspace changes"
        )));
    }
    Ok(Some(Kept {
        id: name.to_owned(),
        stored,
        mounted,
        sandbox: true,
    }))
}

fn newest_with_changes(store: &Store) -> Result<String, Failure> {
    let sessions = store.list(usize::MAX).map_err(Failure::new)?;
    sessions
        .into_iter()
        .map(|row| row.id)
        .find(|id| Stored::new(&store.dir_of(id)).has_changes())
        .ok_or_else(|| {
            Failure::new("no session keeps workspace changes")
                .hint("run with a workspace first: capsem run -w DIR -- COMMAND")
        })
}

/// `capsem diff`.
pub fn diff(id: Option<&str>, stat: bool, json: bool) -> Result<i32, Failure> {
    let kept = find(id)?;
    let changes = kept.changes()?;
    if json {
        for change in &changes.changes {
            outln!("{}", json!({"type": "change", "data": change}));
        }
        for refusal in &changes.refused {
            outln!("{}", json!({"type": "refused", "data": refusal}));
        }
    } else if stat {
        print_stat(&changes);
    } else {
        let patch = patch_of(&kept, &changes)?;
        // On a terminal the guest's text cannot drive it; into a pipe the
        // patch goes as it is.
        if terminal::stdout_is_terminal() {
            let shown = capsem_core::text::VisibleLines::default().push(&patch);
            crate::out::bytes(shown.as_bytes());
        } else {
            crate::out::bytes(&patch);
        }
    }
    Ok(0)
}

/// The changes `capsem diff [ID]` shows and their patch, as `capsem mcp`'s
/// `workspace_diff` answers them. Not on a runtime's thread: a sandbox's
/// changes are saved first through the service.
pub fn changes_and_patch(id: Option<&str>) -> Result<(Changes, Vec<u8>), Failure> {
    let kept = find(id)?;
    let changes = kept.changes()?;
    let patch = patch_of(&kept, &changes)?;
    Ok((changes, patch))
}

fn patch_of(kept: &Kept, changes: &Changes) -> Result<Vec<u8>, Failure> {
    let mut patch = Vec::new();
    patch::write_patch(&mut patch, changes, &kept.stored.archive(), &kept.mounted)
        .map_err(Failure::new)?;
    Ok(patch)
}

fn print_stat(changes: &Changes) {
    for change in &changes.changes {
        let letter = match change.change {
            ChangeKind::Added => "A",
            ChangeKind::Modified => "M",
            ChangeKind::Deleted => "D",
            ChangeKind::Renamed => "R",
        };
        let path = match &change.from {
            Some(from) => format!("{} -> {}", visible(from), visible(&change.path)),
            None => visible(&change.path).into_owned(),
        };
        let flags = if change.flags.is_empty() {
            String::new()
        } else {
            format!("  [{}]", change.flags.join("; "))
        };
        outln!("{letter} {path}{flags}");
    }
    for refusal in &changes.refused {
        outln!("! {}  (refused: {})", visible(&refusal.path), refusal.why);
    }
    if changes.git_files > 0 {
        outln!(
            "  ({} changes inside .git are not applied as files)",
            changes.git_files
        );
    }
    if changes.commits {
        outln!("  (new commits: applied as a branch capsem/ID)");
    }
}

/// `capsem apply`.
pub fn apply(args: ApplyArgs) -> Result<i32, Failure> {
    let (kept, paths) = split_args(&args.args)?;
    let cwd = std::env::current_dir().unwrap_or_default();
    let selection = Selection {
        paths: paths
            .iter()
            .map(|p| under_root(p, &cwd, &kept.mounted.root))
            .collect::<Result<_, _>>()?,
        include_git_internals: args.include_git_internals,
        force: args.force,
    };
    let mut changes = kept.changes()?;
    changes.changes.retain(|c| selection.selects(c));
    // Commits come with the whole of a run's changes, not with some paths.
    let commits = changes.commits && selection.paths.is_empty();
    if changes.changes.is_empty() && !commits {
        eprintln!("capsem: nothing to apply");
        return Ok(0);
    }
    let who = if kept.sandbox { "sandbox" } else { "session" };
    eprintln!(
        "capsem: {who} {} changes {}:",
        kept.id,
        tilde(&kept.mounted.root)
    );
    print_stat(&changes);
    if !args.yes && !confirm(changes.changes.len() + usize::from(commits))? {
        eprintln!("capsem: nothing applied");
        return Ok(1);
    }
    let archive = kept.stored.archive();
    match apply::apply(&changes, &archive, &kept.mounted, &selection).map_err(Failure::new)? {
        Outcome::Conflicts(conflicts) => {
            for conflict in &conflicts {
                eprintln!(
                    "capsem: conflict: {} changed on the host after the run saw it",
                    visible(&conflict.path)
                );
            }
            Err(
                Failure::new(format!("{} conflicts; nothing applied", conflicts.len()))
                    .hint("look at them, then apply the rest by path, or all with --force"),
            )
        }
        Outcome::Applied(done) => {
            for dir in &done.kept {
                eprintln!(
                    "capsem: kept {}: it holds files the run could not see",
                    visible(dir)
                );
            }
            let mut paths = done.paths.clone();
            if commits {
                let branch = format!("capsem/{}", kept.id);
                let archive = kept.stored.archive();
                let dir = kept.stored.dir();
                let root = &kept.mounted.root;
                match capsem_core::workspace::git::fetch_commits(&archive, root, &branch, dir) {
                    Ok(Some(commit)) => {
                        eprintln!("capsem: the run's commits are branch {branch} ({commit})");
                        paths.push(format!("refs/heads/{branch}"));
                    }
                    Ok(None) => {}
                    Err(e) => eprintln!("capsem: {e}"),
                }
            }
            record(&kept, "apply", paths, done.bytes)?;
            eprintln!(
                "capsem: applied {} changes ({} bytes) to {}",
                done.paths.len(),
                done.bytes,
                tilde(&kept.mounted.root)
            );
            Ok(0)
        }
    }
}

/// The session (if the first argument names one that kept changes) and
/// the paths.
fn split_args(args: &[String]) -> Result<(Kept, &[String]), Failure> {
    if let Some(first) = args.first()
        && let Ok(kept) = find(Some(first))
    {
        return Ok((kept, &args[1..]));
    }
    Ok((find(None)?, args))
}

/// A path the user gave, as a path under the project's root.
fn under_root(arg: &str, cwd: &Path, root: &Path) -> Result<String, Failure> {
    let path = Path::new(arg);
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    let inside = absolute
        .strip_prefix(root)
        .map(Path::to_path_buf)
        .or_else(|_| {
            // Not from inside the project: taken as under its root.
            if path.is_absolute() {
                Err(())
            } else {
                Ok(path.to_path_buf())
            }
        })
        .map_err(|()| Failure::new(format!("{arg} is not in the project {}", root.display())))?;
    let normal: Vec<String> = inside
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if normal.iter().any(|c| c == "..") {
        return Err(Failure::new(format!("{arg}: '..' is not allowed here")));
    }
    Ok(normal.join("/"))
}

/// Asks on the terminal; without one, `--yes` is needed.
fn confirm(count: usize) -> Result<bool, Failure> {
    if !terminal::stdin_is_terminal() {
        return Err(Failure::new("not applying without a terminal to ask on")
            .hint("read `capsem diff`, then run `capsem apply --yes`"));
    }
    eprint!("capsem: apply these {count} changes? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::new(format!("reading the answer: {e}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn record(
    kept: &Kept,
    action: &'static str,
    paths: Vec<String>,
    bytes: u64,
) -> Result<(), Failure> {
    let user = std::env::var("USER")
        .unwrap_or_else(|_| format!("uid {}", rustix::process::getuid().as_raw()));
    let record = ApplyRecord {
        at_ms: capsem_core::session::store::now_ms(),
        action: action.to_owned(),
        user,
        paths,
        bytes,
    };
    kept.stored.record(&record).map_err(|e| {
        Failure::new(format!(
            "recording the {action} in session {}: {e}",
            kept.id
        ))
    })
}

/// `capsem discard`.
pub fn discard(id: Option<&str>) -> Result<i32, Failure> {
    let kept = find(id)?;
    if kept.sandbox {
        return Err(Failure::new(format!(
            "sandbox {}'s changes live on its disk; discarding them here would not undo them",
            kept.id
        ))
        .hint("undo them in the sandbox, or `capsem rm` it"));
    }
    kept.stored
        .discard()
        .map_err(|e| Failure::new(format!("discarding: {e}")))?;
    record(&kept, "discard", Vec::new(), 0)?;
    eprintln!("capsem: discarded the changes of session {}", kept.id);
    Ok(0)
}
