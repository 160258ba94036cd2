//! The wire protocol between the Capsem host and its guest agent.
//!
//! One virtio-serial port carries everything. On it:
//!
//! 1. **Handshake.** The guest sends a [`GuestHello`] frame as soon as its
//!    agent is ready; the host checks the version and answers with a
//!    [`HostHello`] carrying the wall clock and fresh entropy; the guest
//!    confirms with [`GuestReady`]. A VM restored from a boot template
//!    starts at the [`HostHello`]. All are read with [`frame::read_frame`],
//!    which never reads past its frame.
//! 2. **Multiplexing.** The port then becomes a [`mux`] (yamux) connection.
//!    The host opens one stream per command.
//! 3. **Messages.** Each stream carries length-prefixed frames
//!    ([`FrameCodec`]) of typed messages: [`HostToGuest`] one way,
//!    [`GuestToHost`] the other.
//!
//! # Security invariants
//!
//! The guest is assumed hostile. Everything it sends is bounded before it is
//! buffered ([`limits::MAX_FRAME_BYTES`], the yamux windows) and checked after
//! it is decoded ([`GuestToHost::validate`]). A bad frame is an error value,
//! never a panic, and the host stops the VM on the first one.
//!
//! ```
//! use bytes::BytesMut;
//! use capsem_proto::{frame, ExitStatus, GuestToHost};
//!
//! let mut buf = BytesMut::new();
//! frame::encode_frame(&GuestToHost::Exited(ExitStatus::Code(0)), &mut buf).unwrap();
//! let (msg, used) = frame::decode_frame::<GuestToHost>(&buf).unwrap().unwrap();
//! assert_eq!(msg, GuestToHost::Exited(ExitStatus::Code(0)));
//! assert_eq!(used, buf.len());
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod archive;
pub mod blocking;
pub mod frame;
pub mod limits;
pub mod msg;
pub mod mux;
pub mod workspace;

pub use frame::{FrameCodec, FrameError};
pub use msg::{
    ArchiveTarget, Command, ConnectRequest, EnvError, ExecRequest, ExitStatus, FILE_ROOTS,
    GuestFile, GuestHello, GuestReady, GuestToHost, HostHello, HostToGuest, ProcessInfo,
    ProtocolError, TtySize, validate_copy_path, validate_env_name, validate_files, validate_name,
    validate_top_name,
};

/// The codec the host uses: decodes guest messages, encodes host messages.
pub type HostCodec = FrameCodec<GuestToHost, HostToGuest>;
/// The codec the guest uses: decodes host messages, encodes guest messages.
pub type GuestCodec = FrameCodec<HostToGuest, GuestToHost>;
