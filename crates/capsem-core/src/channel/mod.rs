//! The host's end of the channel to the guest agent.
//!
//! [`Channel::handshake`] takes the connected socket, checks the guest's
//! hello and answers it, then runs the multiplexer. Commands run on streams
//! of their own ([`exec`]); signals and shutdown go over one control stream.
//! Everything the guest sends is validated; the first bad frame ends the
//! channel with a [`ChannelError`].

mod copy;
pub mod exec;
mod gate;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use capsem_proto::mux::{self, ConnectionError, Mode, Opener};
use capsem_proto::workspace::WorkspaceMount;
use capsem_proto::{
    FrameError, GuestFile, GuestHello, GuestReady, GuestToHost, HostCodec, HostHello, HostToGuest,
    ProtocolError, frame, validate_files,
};
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tokio_util::codec::{Framed, FramedWrite};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

pub use copy::Chunks;
pub use exec::{Control, Ended, ExecIo, ExecSpec, Recording, run as exec};
pub use gate::NotDrained;

/// A multiplexed stream framed with the host's codec.
pub type Stream = Framed<Compat<mux::Stream>, HostCodec>;

/// The channel failed or the guest broke the protocol.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// A frame could not be read or was malformed.
    #[error("bad frame from the guest: {0}")]
    Frame(#[from] FrameError),
    /// A well-formed message broke a rule.
    #[error("the guest broke the protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The multiplexer failed.
    #[error("the channel to the guest failed: {0}")]
    Mux(#[from] ConnectionError),
    /// The guest closed a stream before the command's exit status.
    #[error("the guest agent closed the channel before the command finished")]
    Closed,
    /// The agent refused a request.
    #[error("the guest agent refused the command: {0}")]
    Refused(String),
}

impl ChannelError {
    /// Whether the guest side went away (as when the VM stops), rather than
    /// sending something wrong.
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            ChannelError::Closed
                | ChannelError::Mux(_)
                | ChannelError::Frame(FrameError::Truncated | FrameError::Io(_))
        )
    }
}

/// An open channel. Any number of commands and copies may use it at once
/// (each on a stream of its own); signals share the control stream.
pub struct Channel {
    hello: Option<GuestHello>,
    ready: GuestReady,
    opener: Opener,
    driver: JoinHandle<Result<(), ConnectionError>>,
    control: tokio::sync::Mutex<FramedWrite<Compat<mux::Stream>, HostCodec>>,
    next_exec: AtomicU32,
    gate: gate::Gate,
}

/// Where a VM's agent is when the channel opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Booted cold: it sends its hello first.
    Boot,
    /// Restored from a boot template: it waits for the host's hello.
    Restored,
}

/// What the host tells a VM's agent in the handshake.
#[derive(Debug, Clone)]
pub struct Greeting {
    /// The PEM certificate of the CA the guest is to trust.
    pub ca_pem: String,
    /// Whether `/root` is the sandbox's own disk.
    pub home_disk: bool,
    /// Where the agent is.
    pub start: Start,
}

/// Reads and checks the hello an agent sends once it is up.
pub async fn read_hello(socket: &mut UnixStream) -> Result<GuestHello, ChannelError> {
    let hello: GuestHello = frame::read_frame(socket).await?;
    hello.validate()?;
    Ok(hello)
}

/// The host's wall clock since the Unix epoch.
fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// The streams the guest opens (its network connections and queries).
pub type Inbound = mpsc::Receiver<mux::Stream>;

impl Channel {
    /// Reads the guest's hello from `socket` (unless the VM was restored
    /// from a template, whose hello its builder read), answers it (with
    /// `greeting` and fresh entropy), waits for the guest to
    /// confirm, and starts the multiplexer. Returns the channel and the
    /// streams the guest will open; whoever takes those serves them, and
    /// dropped, they are refused. The caller bounds the time this may take.
    pub async fn handshake(
        mut socket: UnixStream,
        greeting: Greeting,
    ) -> Result<(Channel, Inbound), ChannelError> {
        let hello = match greeting.start {
            Start::Boot => Some(read_hello(&mut socket).await?),
            Start::Restored => None,
        };
        let host_hello = HostHello::new(
            unix_now().as_nanos() as u64,
            greeting.ca_pem,
            rand::random(),
            greeting.home_disk,
        );
        frame::write_frame(&mut socket, &host_hello).await?;
        let ready: GuestReady = frame::read_frame(&mut socket).await?;
        let (socket, gate) = gate::Gated::new(socket).map_err(FrameError::Io)?;
        let (mut opener, inbound, driver) = mux::start(socket.compat(), Mode::Client);
        let driver = tokio::spawn(driver);
        // The control stream is opened before any guest program can open
        // streams of its own: the stream limit must never hold back a
        // signal or the shutdown.
        let control = match opener.open().await {
            Ok(stream) => FramedWrite::new(stream.compat(), HostCodec::new()),
            Err(e) => {
                driver.abort();
                return Err(e.into());
            }
        };
        let channel = Channel {
            hello,
            ready,
            opener,
            driver,
            control: tokio::sync::Mutex::new(control),
            next_exec: AtomicU32::new(1),
            gate,
        };
        Ok((channel, inbound))
    }

    /// The guest's hello; `None` on a VM restored from a template.
    pub fn hello(&self) -> Option<&GuestHello> {
        self.hello.as_ref()
    }

    /// The guest's confirmation of the handshake.
    pub fn ready(&self) -> &GuestReady {
        &self.ready
    }

    /// Opens a new framed stream.
    async fn open(&self) -> Result<Stream, ChannelError> {
        let stream = self.opener.clone().open().await?;
        Ok(Framed::new(stream.compat(), HostCodec::new()))
    }

    /// Allocates the id of a new command; ids are never reused while the
    /// channel lives (2^32 commands).
    fn exec_id(&self) -> u32 {
        self.next_exec.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a message on the control stream.
    async fn control(&self, msg: HostToGuest) -> Result<(), ChannelError> {
        self.control.lock().await.send(msg).await?;
        Ok(())
    }

    /// Has the guest write `files` (small ones, e.g. the AI CLIs' settings).
    pub async fn write_files(&self, files: Vec<GuestFile>) -> Result<(), ChannelError> {
        validate_files(&files)?;
        self.ask(HostToGuest::WriteFiles(files)).await
    }

    /// Has the guest mount the workspace, whose files it then asks for on
    /// streams of its own.
    pub async fn mount_workspace(&self, mount: WorkspaceMount) -> Result<(), ChannelError> {
        self.ask(HostToGuest::MountWorkspace(mount)).await
    }

    /// Sends `msg` on a stream of its own and waits for its `Done`.
    async fn ask(&self, msg: HostToGuest) -> Result<(), ChannelError> {
        msg.validate()?;
        let mut stream = self.open().await?;
        stream.send(msg).await?;
        let reply = stream.next().await.ok_or(ChannelError::Closed)??;
        reply.validate()?;
        match reply {
            GuestToHost::Done => Ok(()),
            GuestToHost::Refused(reason) => Err(ChannelError::Refused(reason)),
            _ => Err(ProtocolError::Unexpected("an answer other than Done to a request").into()),
        }
    }

    /// Holds everything the host writes to the guest from now on, and
    /// waits, within `limit`, until the guest's side has read what was
    /// written before: the VM can then be snapshotted without losing a
    /// byte in flight. An error releases the writes again.
    pub async fn hold_writes(&self, limit: Duration) -> Result<(), NotDrained> {
        self.gate.hold(limit).await
    }

    /// Lets the host's writes go to the guest again.
    pub fn release_writes(&self) {
        self.gate.release();
    }

    /// Sets the guest's wall clock to the host's (after a resume).
    pub async fn set_clock(&self) -> Result<(), ChannelError> {
        let unix_time_ns = unix_now().as_nanos() as u64;
        self.control(HostToGuest::SetClock { unix_time_ns }).await
    }

    /// Asks the guest to power off. The VM's exit confirms it.
    pub async fn shutdown(&self) -> Result<(), ChannelError> {
        self.control(HostToGuest::Shutdown).await
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
