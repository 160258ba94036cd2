//! Redirected TCP connections: each becomes a stream to the host, which
//! decides whether it may go ahead and then carries its bytes.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use capsem_proto::{ConnectRequest, GuestCodec, GuestToHost, HostToGuest};
use futures::{SinkExt, StreamExt};
use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::{Streams, process};

/// How long the host may take to decide.
const DECISION_WAIT: Duration = Duration::from_secs(30);

/// Accepts redirected connections until the listener fails.
pub async fn serve(listener: TcpListener, streams: Streams) {
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                let streams = streams.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(socket, peer, &streams).await {
                        tracing::debug!("intercepted connection from {peer}: {e:#}");
                    }
                });
            }
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!("accepting an intercepted connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(socket: TcpStream, peer: SocketAddr, streams: &Streams) -> Result<()> {
    let dst = original_destination(&socket)?;
    // Scanning /proc blocks; the agent's runtime has one thread.
    let owner = tokio::task::spawn_blocking(move || process::owner_of(peer, dst));
    let request = ConnectRequest {
        addr: dst.ip().octets(),
        port: dst.port(),
        process: owner.await.ok().flatten(),
    };
    let (stream, _place) = streams
        .open()
        .await
        .context("opening a stream to the host")?;
    let mut framed = Framed::new(stream.compat(), GuestCodec::new());
    framed.send(GuestToHost::Connect(request)).await?;
    let answer = tokio::time::timeout(DECISION_WAIT, framed.next()).await;
    match answer {
        Ok(Some(Ok(HostToGuest::Connected))) => {}
        Ok(Some(Ok(HostToGuest::Denied(reason)))) => {
            reset(socket);
            bail!("denied: {reason}");
        }
        _ => {
            reset(socket);
            bail!("no decision from the host");
        }
    }
    let parts = framed.into_parts();
    let (mut host, early) = (parts.io, parts.read_buf);
    let mut socket = socket;
    // Bytes arrive in frames already sized by the host: send each at once
    // (an SSE token must not wait for Nagle).
    socket.set_nodelay(true)?;
    // Bytes the host sent right behind its answer belong to the connection.
    socket.write_all(&early).await?;
    tokio::io::copy_bidirectional(&mut socket, &mut host).await?;
    Ok(())
}

/// Where the process meant to connect, before the redirect.
fn original_destination(socket: &TcpStream) -> Result<std::net::SocketAddrV4> {
    let sin = getsockopt(socket, sockopt::OriginalDst).context("SO_ORIGINAL_DST")?;
    let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
    Ok(std::net::SocketAddrV4::new(ip, u16::from_be(sin.sin_port)))
}

/// Closes with a reset, so the process sees "connection refused/reset" at
/// once instead of a clean end of stream it might take for an answer.
fn reset(socket: TcpStream) {
    // A zero linger time never blocks the close.
    let abort = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt(&socket, sockopt::Linger, &abort);
}
