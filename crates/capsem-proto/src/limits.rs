//! Hard limits of the wire protocol. Both sides enforce them; the host treats
//! a guest that exceeds one as hostile and stops the VM.

/// Version of the protocol spoken on the channel. Bumped on any incompatible
/// change to the handshake, framing or message types.
pub const PROTOCOL_VERSION: u32 = 8;

/// Largest frame payload either side accepts, in bytes. A length header above
/// this is rejected before any buffer is allocated.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Largest stdin/stdout/stderr chunk a sender puts in one frame.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// Most arguments an exec request may carry.
pub const MAX_ARGS: usize = 4096;

/// Most environment variables an exec request may carry.
pub const MAX_ENV_VARS: usize = 1024;

/// Longest free-form text (error messages, version strings) a guest may send.
pub const MAX_TEXT_BYTES: usize = 4096;

/// Most streams the channel multiplexes at once. Opening one more than the
/// peer allows ends the whole connection (yamux treats it as a protocol
/// error), so the guest keeps to [`MAX_GUEST_STREAMS`].
pub const MAX_STREAMS: usize = 128;

/// Most streams the guest agent opens at once (its intercepted connections
/// and DNS queries). The rest of [`MAX_STREAMS`] is left for the host's
/// own streams and for closed streams the host has not let go of yet.
pub const MAX_GUEST_STREAMS: usize = 96;

/// Of [`MAX_GUEST_STREAMS`], the streams the guest keeps for workspace
/// requests (one request in flight on each).
pub const MAX_WORKSPACE_STREAMS: usize = 8;

/// Most files a host may ask the guest to write before a command.
pub const MAX_FILES: usize = 64;

/// Most bytes of all such files together (they travel in one frame).
pub const MAX_FILES_BYTES: usize = 512 * 1024;

/// Most rows or columns of a terminal.
pub const MAX_TTY_CELLS: u16 = 4096;

/// Highest signal number on Linux (`SIGRTMAX`).
pub const MAX_SIGNAL: u8 = 64;
