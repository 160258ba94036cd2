//! Sessions: every VM run is one, recorded on disk.
//!
//! - [`budget`]: the disk one session may take;
//! - [`dirs`]: the session's directory (boot log, QEMU log, event
//!   database, transcript);
//! - [`store`]: the index `~/.capsem/sessions.db`, one row per session;
//! - [`events`]: the session's own event database and its writer thread;
//! - [`migrate`]: schema versions for both;
//! - [`transcript`]: the bytes of a terminal session, with times.

pub mod budget;
pub mod dirs;
pub mod events;
pub mod migrate;
pub mod store;
pub mod transcript;

pub use budget::Budget;
pub use dirs::{Session, SessionError, log_tail};
pub use events::{Event, EventCounts, EventLog, EventWriter, ExecEvent};
pub use store::{Ending, NewSession, SessionRow, Status, Store, StoreError};
