//! Stream multiplexing over the single channel, with [`yamux`].
//!
//! yamux gives each stream its own flow-control window, so a command that
//! floods stdout stalls only its own stream and memory on either side stays
//! bounded by the windows below. A yamux connection makes progress only while
//! it is polled, so [`start`] returns a driver future that the caller spawns;
//! [`Opener`] hands outbound-stream requests to it.

use std::future::Future;
use std::task::Poll;

use futures::channel::{mpsc, oneshot};
use futures::{AsyncRead, AsyncWrite, StreamExt};
pub use yamux::{ConnectionError, Mode, Stream};

use crate::limits::MAX_STREAMS;

/// Receive window for all streams of one connection together, in bytes. It
/// bounds what a peer can make us buffer: 32 MiB, yamux's minimum of
/// 256 KiB per stream.
const MAX_CONNECTION_WINDOW_BYTES: usize = MAX_STREAMS * 256 * 1024;

/// Opens outbound streams on a running connection.
#[derive(Debug, Clone)]
pub struct Opener {
    requests: mpsc::Sender<oneshot::Sender<Result<Stream, ConnectionError>>>,
}

impl Opener {
    /// Opens a new stream. Fails once the connection is gone.
    pub async fn open(&mut self) -> Result<Stream, ConnectionError> {
        let (tx, rx) = oneshot::channel();
        futures::SinkExt::send(&mut self.requests, tx)
            .await
            .map_err(|_| ConnectionError::Closed)?;
        rx.await.map_err(|_| ConnectionError::Closed)?
    }
}

/// Starts multiplexing over `io`.
///
/// Returns the opener, the streams the peer opens, and the driver. Spawn the
/// driver; it resolves when the connection ends. Inbound streams beyond what
/// the receiver has taken are refused (reset), never queued without bound.
pub fn start<T>(
    io: T,
    mode: Mode,
) -> (
    Opener,
    mpsc::Receiver<Stream>,
    impl Future<Output = Result<(), ConnectionError>>,
)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut config = yamux::Config::default();
    config
        .set_max_num_streams(MAX_STREAMS)
        .set_max_connection_receive_window(Some(MAX_CONNECTION_WINDOW_BYTES));
    let mut conn = yamux::Connection::new(io, config, mode);
    let (open_tx, mut open_rx) = mpsc::channel(4);
    let (mut inbound_tx, inbound_rx) = mpsc::channel(MAX_STREAMS);
    let mut pending: Option<oneshot::Sender<_>> = None;
    let mut openers_gone = false;

    let driver = futures::future::poll_fn(move |cx| {
        loop {
            if pending.is_none() && !openers_gone {
                match open_rx.poll_next_unpin(cx) {
                    Poll::Ready(Some(reply)) => pending = Some(reply),
                    Poll::Ready(None) => openers_gone = true,
                    Poll::Pending => {}
                }
            }
            let Some(reply) = pending.take() else { break };
            match conn.poll_new_outbound(cx) {
                Poll::Ready(result) => {
                    // The requester may have given up; nothing to do then.
                    let _ = reply.send(result);
                }
                Poll::Pending => {
                    pending = Some(reply);
                    break;
                }
            }
        }
        loop {
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    // A full queue or a dropped receiver refuses the stream:
                    // dropping it resets it on the peer's side.
                    let _ = inbound_tx.try_send(stream);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    });
    (Opener { requests: open_tx }, inbound_rx, driver)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::compat::TokioAsyncReadCompatExt;

    #[tokio::test]
    async fn streams_carry_data_both_ways() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (mut opener, _in_a, drive_a) = start(a.compat(), Mode::Client);
        let (_opener_b, mut in_b, drive_b) = start(b.compat(), Mode::Server);
        tokio::spawn(drive_a);
        tokio::spawn(drive_b);

        let echo = tokio::spawn(async move {
            let mut s = in_b.next().await.unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
            s.close().await.unwrap();
        });
        let mut s = opener.open().await.unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        s.write_all(&data).await.unwrap();
        s.close().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, data);
        echo.await.unwrap();
    }

    #[tokio::test]
    async fn garbage_from_the_peer_ends_the_connection_with_an_error() {
        let (a, mut b) = tokio::io::duplex(1024);
        let (_opener, _inbound, drive) = start(a.compat(), Mode::Client);
        tokio::io::AsyncWriteExt::write_all(&mut b, &[0xffu8; 64])
            .await
            .unwrap();
        assert!(drive.await.is_err());
    }
}
