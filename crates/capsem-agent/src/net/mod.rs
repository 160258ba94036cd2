//! The guest's only way out: every TCP connection and DNS query a guest
//! process makes is caught here and carried to the host, which decides.
//!
//! The kernel has no driver for a real network device. `dummy0` carries the
//! default route so that `connect()` to any address gets as far as the NAT
//! hook, where nftables redirects TCP to [`intercept`] and DNS to [`dns`].
//! Everything else (UDP, ICMP, raw sockets) is rejected and logged by the
//! kernel, which [`blocked`] reports to the host. IPv6 is compiled out.
//!
//! Security does not rest on these rules: without them a packet reaches
//! `dummy0` and is discarded. The rules make interception work and make
//! refusals fast and visible.

mod blocked;
mod dns;
mod intercept;
pub mod link;
mod process;
pub mod trust;

use std::io::Write;
use std::process::{Command, Stdio};

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use capsem_proto::limits::{MAX_GUEST_STREAMS, MAX_WORKSPACE_STREAMS};
use capsem_proto::mux::{self, Opener};
use tokio::sync::watch;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::reap::Reaper;

/// Where redirected TCP connections arrive.
const INTERCEPT_PORT: u16 = 15001;
/// The log prefix of packets the firewall rejected.
const BLOCKED_PREFIX: &str = "capsem-blocked: ";

/// The firewall. Loopback traffic is left alone; after redirection a
/// packet's destination is loopback, and the agent's replies go to the
/// guest's own address, so the filter lets both through. (It cannot test
/// the output device: within one hook traversal that is still the one
/// chosen before the redirect.)
fn ruleset() -> String {
    let own = std::net::Ipv4Addr::from(link::DUMMY_ADDR);
    format!(
        "table ip capsem {{
  chain out_nat {{
    type nat hook output priority -100; policy accept;
    ip daddr 127.0.0.0/8 return
    meta l4proto tcp redirect to :{INTERCEPT_PORT}
    udp dport 53 redirect to :53
  }}
  chain out_filter {{
    type filter hook output priority 0; policy accept;
    ip daddr {{ 127.0.0.0/8, {own} }} accept
    log prefix \"{BLOCKED_PREFIX}\" level info
    reject
  }}
}}
"
    )
}

/// Whether the network is set up; commands wait for it.
pub type Ready = watch::Receiver<bool>;

/// Streams for intercepted connections; with DNS queries, the firewall
/// reports and the workspace's requests they make up the guest's budget ([`MAX_GUEST_STREAMS`]). Each
/// kind has its own share, so connections held open cannot starve name
/// lookups.
const CONNECTION_STREAMS: usize = MAX_GUEST_STREAMS - dns::CONCURRENT - 1 - MAX_WORKSPACE_STREAMS;

/// Opens streams to the host within a share of the guest's budget: past
/// it, new connections or queries wait for a stream to close, rather than
/// end the channel (and the VM) by opening one more than the host allows.
#[derive(Clone)]
pub struct Streams {
    opener: Opener,
    budget: Arc<Semaphore>,
}

impl Streams {
    fn new(opener: Opener, share: usize) -> Streams {
        Streams {
            opener,
            budget: Arc::new(Semaphore::new(share)),
        }
    }

    /// Opens a stream once the budget allows. The stream's place in the
    /// budget is held until the returned permit drops: keep it as long as
    /// the stream.
    pub async fn open(&self) -> Result<(mux::Stream, OwnedSemaphorePermit)> {
        let place = self.place().await?;
        Ok((self.open_in(&place).await?, place))
    }

    /// Waits for a place in the budget, to open a stream in later.
    pub async fn place(&self) -> Result<OwnedSemaphorePermit> {
        Ok(self.budget.clone().acquire_owned().await?)
    }

    /// Opens a stream in a place taken with [`Streams::place`].
    /// The place must be kept as long as the stream.
    pub async fn open_in(&self, _place: &OwnedSemaphorePermit) -> Result<mux::Stream> {
        Ok(self.opener.clone().open().await?)
    }
}

/// Sets up interception: interfaces now, then the firewall and the
/// listeners in the background. The returned watch turns true once
/// connections are caught; it stays false if that failed (the failure is
/// logged, and guest connections then go nowhere).
pub fn start(reaper: &Reaper, opener: Opener) -> Ready {
    let (tx, rx) = watch::channel(false);
    let reaper = reaper.clone();
    tokio::spawn(async move {
        match setup(&reaper, opener).await {
            Ok(()) => {
                let _ = tx.send(true);
            }
            Err(e) => tracing::error!("network interception is off: {e:#}"),
        }
    });
    rx
}

async fn setup(reaper: &Reaper, opener: Opener) -> Result<()> {
    link::loopback_up()?;
    link::dummy_default_route()?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", INTERCEPT_PORT))
        .await
        .context("listening for intercepted connections")?;
    let resolver = tokio::net::UdpSocket::bind(("127.0.0.1", 53))
        .await
        .context("listening for DNS queries")?;
    load_rules(reaper).await?;
    let connections = Streams::new(opener.clone(), CONNECTION_STREAMS);
    let queries = Streams::new(opener.clone(), dns::CONCURRENT);
    tokio::spawn(intercept::serve(listener, connections));
    tokio::spawn(dns::serve(resolver, queries));
    tokio::spawn(blocked::serve(Streams::new(opener, 1)));
    Ok(())
}

/// Loads [`ruleset`] with `nft`.
async fn load_rules(reaper: &Reaper) -> Result<()> {
    let mut cmd = Command::new("/usr/sbin/nft");
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let (mut child, exit) = reaper.spawn(&mut cmd).context("starting nft")?;
    // The rules fit in the pipe's buffer: this write does not block.
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(ruleset().as_bytes())?;
    drop(stdin);
    match exit.await {
        Ok(capsem_proto::ExitStatus::Code(0)) => Ok(()),
        Ok(status) => bail!("nft failed to load the firewall ({status:?})"),
        Err(_) => bail!("nft vanished"),
    }
}
