//! A gate on what the host writes to the channel, for suspending a VM.
//!
//! QEMU reads the host's end of the channel whenever the guest has buffers
//! posted, running or not. Bytes it read after a suspend's snapshot was
//! taken would be lost with the QEMU process. So the host holds its writes
//! first ([`Gate::hold`]: the multiplexer's writes wait) and waits until
//! QEMU has read everything already sent (the socket's send queue is
//! empty): from then until [`Gate::release`] the socket carries nothing
//! toward the guest.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

/// How often the send queue is looked at while it drains.
const DRAIN_POLL: Duration = Duration::from_millis(5);

// `SIOCOUTQ` (the same number as `TIOCOUTQ`): what a Unix socket sent and
// its peer has not read yet (the buffers' size, not the bytes': zero
// exactly when everything was read).
nix::ioctl_read_bad!(send_queue_len, libc::TIOCOUTQ, libc::c_int);

/// The guest did not read what the host had sent.
#[derive(Debug, thiserror::Error)]
#[error(
    "the guest did not read what the host sent it within {1:?} ({0} bytes of buffers still queued)"
)]
pub struct NotDrained(pub usize, pub Duration);

/// Opens and closes the way to the guest; shared by the channel and the
/// socket it writes to.
#[derive(Clone)]
pub struct Gate {
    state: Arc<Mutex<State>>,
    /// The host's end of the socket, to look at its send queue.
    socket: Arc<OwnedFd>,
}

#[derive(Default)]
struct State {
    held: bool,
    /// The writer waiting for the gate to open.
    waiting: Option<Waker>,
}

impl Gate {
    /// Holds every write from now on, then waits, within `limit`, until
    /// the peer has read what was written before. On an error the gate
    /// is open again.
    pub async fn hold(&self, limit: Duration) -> Result<(), NotDrained> {
        self.lock().held = true;
        let deadline = Instant::now() + limit;
        loop {
            let queued = self.queued();
            if queued == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.release();
                return Err(NotDrained(queued, limit));
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Lets writes through again.
    pub fn release(&self) {
        let waiting = {
            let mut state = self.lock();
            state.held = false;
            state.waiting.take()
        };
        if let Some(waker) = waiting {
            waker.wake();
        }
    }

    fn queued(&self) -> usize {
        let mut len: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int through the pointer, which
        // points at `len`; the descriptor is an open socket.
        match unsafe { send_queue_len(self.socket.as_raw_fd(), &mut len) } {
            Ok(_) => usize::try_from(len).unwrap_or(0),
            // A socket that cannot say has nothing more to give.
            Err(_) => 0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The host's end of the channel, its writes behind a [`Gate`].
pub struct Gated {
    socket: UnixStream,
    gate: Gate,
}

impl Gated {
    /// Puts `socket` behind a new gate, open.
    pub fn new(socket: UnixStream) -> io::Result<(Self, Gate)> {
        let fd = rustix::io::dup(&socket)?;
        let gate = Gate {
            state: Arc::default(),
            socket: Arc::new(fd),
        };
        Ok((
            Gated {
                socket,
                gate: gate.clone(),
            },
            gate,
        ))
    }

    /// `Pending` while the gate is held, with the waker kept for
    /// [`Gate::release`].
    fn poll_open(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.gate.lock();
        if state.held {
            state.waiting = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

impl AsyncRead for Gated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gated {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_open(cx));
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_open(cx));
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_held_gate_stops_writes_until_released_and_waits_for_the_peer() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let (mut gated, gate) = Gated::new(ours).unwrap();
        gated.write_all(b"before").await.unwrap();
        // Unread bytes: the hold cannot complete.
        let err = gate.hold(Duration::from_millis(50)).await.unwrap_err();
        assert!(err.0 > 0, "{err}");
        let mut buf = [0u8; 6];
        theirs.read_exact(&mut buf).await.unwrap();
        gate.hold(Duration::from_secs(1)).await.unwrap();

        let writer = tokio::spawn(async move {
            gated.write_all(b"after").await.unwrap();
            gated
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut probe = [0u8; 5];
        let nothing =
            tokio::time::timeout(Duration::from_millis(50), theirs.read(&mut probe)).await;
        assert!(nothing.is_err(), "a write got through a held gate");
        gate.release();
        let _gated = writer.await.unwrap();
        theirs.read_exact(&mut probe).await.unwrap();
        assert_eq!(&probe, b"after");
    }
}
