//! Workspaces: the user's project in the sandbox, and the sandbox's
//! changes back to the project only when the user accepts them.
//!
//! - [`choose`]: which directory (the git work tree around the current
//!   directory, or `-w DIR`) and which ones are refused;
//! - [`export`]: the host serving that directory read-only to a FUSE mount
//!   in the guest, under which an overlay takes the guest's writes;
//! - [`changes`]: the overlay's upper layer, exported from the guest as a
//!   tar archive and kept with the session, compared with the project
//!   (`capsem diff`, shown by [`patch`]);
//! - [`apply`]: writing accepted changes into the project (`capsem apply`),
//!   and [`git`]: the sandbox's commits, as a branch;
//! - [`stored`]: what a session keeps of it.

pub mod apply;
pub mod changes;
pub mod choose;
pub mod export;
pub mod git;
pub mod patch;
pub mod stored;
#[cfg(test)]
mod tests;
mod tree;

use std::path::PathBuf;

pub use choose::{Workspace, choose};
pub use export::{Excludes, Export};
pub use stored::Stored;

/// Why a workspace could not be used, in the user's words.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// A directory could not be opened.
    #[error("cannot open the workspace {}: {source}", path.display())]
    Open {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The directory holds the user's keys, or is `/` or `$HOME`.
    #[error("{} cannot be a workspace: {why}", path.display())]
    Refused {
        /// The directory.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A `workspace.exclude` glob is malformed.
    #[error("workspace.exclude: '{0}' is not a glob: {1}")]
    Exclude(String, String),
    /// The session has no workspace changes.
    #[error("{0}")]
    NoChanges(String),
    /// The changes archive could not be read.
    #[error("reading the workspace changes {}: {source}", path.display())]
    Archive {
        /// The archive.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The sandbox's commits could not be fetched.
    #[error("bringing the sandbox's commits back: {0}")]
    Git(String),
    /// Writing into the project failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The path under the project.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}
