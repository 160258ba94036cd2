//! Serving the host: handshake, then one task per multiplexed stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use capsem_proto::limits::PROTOCOL_VERSION;
use capsem_proto::mux::{self, Mode};
use capsem_proto::{
    GuestCodec, GuestHello, GuestReady, GuestToHost, HostHello, HostToGuest, frame, msg,
};
use futures::{SinkExt, StreamExt};
use nix::time::{ClockId, clock_settime};
use tokio::sync::Notify;
use tokio_util::codec::Framed;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use crate::archive;
use crate::exec::{self, Channel, Running};
use crate::files;
use crate::identity;
use crate::net;
use crate::port::{self, Port};
use crate::reap::Reaper;
use crate::workspace;

/// How long to wait for the channel port to be registered by the driver.
const PORT_WAIT: Duration = Duration::from_secs(5);

/// Serves until the host asks for shutdown or goes away. A VM restored
/// from a boot template resumes in the read of the host's hello.
pub async fn serve(init_started: Duration) -> Result<()> {
    let reaper = Reaper::start().context("installing the SIGCHLD handler")?;
    let mut port = open_port().await?;
    let hello = GuestHello {
        protocol: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        init_started_ns: init_started.as_nanos() as u64,
        ready_ns: crate::boottime().as_nanos() as u64,
    };
    frame::write_frame(&mut port, &hello)
        .await
        .context("sending hello")?;
    let host: HostHello = frame::read_frame(&mut port)
        .await
        .context("reading the host's hello")?;
    msg::check_version(host.protocol)?;
    identity::make_own(&host.entropy)?;
    set_clock(host.unix_time_ns);
    net::trust::install(&host.ca_pem)?;
    if host.home_disk {
        crate::init::mount_home_disk()?;
    }
    let ready = GuestReady {
        ready_ns: crate::boottime().as_nanos() as u64,
    };
    frame::write_frame(&mut port, &ready)
        .await
        .context("confirming the handshake")?;
    tracing::info!(
        "capsem-agent {}: serving the host",
        env!("CARGO_PKG_VERSION")
    );

    let (opener, mut inbound, driver) = mux::start(port.compat(), Mode::Server);
    tokio::pin!(driver);
    let network = net::start(&reaper, opener.clone());
    let shutdown = Arc::new(Notify::new());
    let running = Running::default();
    loop {
        tokio::select! {
            ended = &mut driver => {
                if let Err(e) = ended {
                    tracing::warn!("channel to the host failed: {e}");
                }
                return Ok(());
            }
            Some(stream) = inbound.next() => {
                let channel = Framed::new(stream.compat(), GuestCodec::new());
                let (reaper, running, shutdown) = (reaper.clone(), running.clone(), shutdown.clone());
                let (network, opener) = (network.clone(), opener.clone());
                tokio::spawn(async move {
                    handle(channel, &reaper, &running, &shutdown, network, opener).await
                });
            }
            () = shutdown.notified() => return Ok(()),
        }
    }
}

async fn open_port() -> Result<Port> {
    let deadline = Instant::now() + PORT_WAIT;
    loop {
        let found = port::find(port::CHANNEL_PORT).and_then(|path| Port::open(&path));
        match found {
            Ok(port) => return Ok(port),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Sets the wall clock from the host's: under TCG there is no paravirtual
/// clock, and TLS, git and make misbehave with a clock stuck in 1970.
fn set_clock(unix_time_ns: u64) {
    let ts = nix::sys::time::TimeSpec::from(Duration::from_nanos(unix_time_ns));
    if let Err(e) = clock_settime(ClockId::CLOCK_REALTIME, ts) {
        tracing::warn!("could not set the clock: {e}");
    }
}

/// Dispatches a new stream on its first message. Commands wait until
/// their connections can be intercepted.
async fn handle(
    mut channel: Channel,
    reaper: &Reaper,
    running: &Running,
    shutdown: &Notify,
    mut network: net::Ready,
    opener: mux::Opener,
) {
    let first = match channel.next().await {
        Some(Ok(msg)) => msg,
        Some(Err(e)) => {
            tracing::warn!("bad first frame from the host: {e}");
            return;
        }
        None => return,
    };
    match first {
        HostToGuest::Exec(req) => {
            // Err: setup failed and was logged; the command runs without
            // a network rather than not at all.
            let _ = network.wait_for(|ready| *ready).await;
            exec::run(channel, req, reaper, running).await
        }
        HostToGuest::WriteFiles(files) => files::serve(channel, files).await,
        HostToGuest::PutArchive(target) => archive::put(channel, target).await,
        HostToGuest::GetArchive { path } => archive::get(channel, path).await,
        HostToGuest::MountWorkspace(mount) => {
            workspace::mount_workspace(channel, mount, opener).await
        }
        HostToGuest::ExportWorkspace => workspace::export(channel).await,
        HostToGuest::Signal { .. }
        | HostToGuest::Resize { .. }
        | HostToGuest::Shutdown
        | HostToGuest::SetClock { .. } => {
            if let Err(e) = control(first, channel, running, shutdown).await {
                tracing::warn!("control stream: {e:#}");
            }
        }
        other => {
            let refusal = format!("a stream cannot start with {other:?}");
            let _ = channel.send(GuestToHost::Refused(refusal)).await;
        }
    }
}

/// Serves the control stream: signals, resizes, the clock after a resume
/// and shutdown.
async fn control(
    first: HostToGuest,
    mut channel: Channel,
    running: &Running,
    shutdown: &Notify,
) -> Result<()> {
    let mut next = Some(first);
    loop {
        let msg = match next.take() {
            Some(msg) => msg,
            None => match channel.next().await {
                Some(msg) => msg?,
                None => return Ok(()),
            },
        };
        msg.validate()?;
        match msg {
            HostToGuest::Signal { exec, signal } => running.signal(exec, signal),
            HostToGuest::Resize { exec, size } => running.resize(exec, size),
            HostToGuest::Shutdown => {
                shutdown.notify_one();
                return Ok(());
            }
            HostToGuest::SetClock { unix_time_ns } => set_clock(unix_time_ns),
            other => bail!("unexpected {other:?} on the control stream"),
        }
    }
}
