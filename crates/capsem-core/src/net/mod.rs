//! The host's side of the guest's network: DNS answers, the policy, and
//! the proxy every guest connection goes through.
//!
//! The guest agent opens one stream per caught connection or DNS query
//! (see `capsem-agent`'s `net` module). [`Network::start`] serves those
//! streams: a name the policy allows gets a synthetic address ([`names`]);
//! a connection to such an address on port 443 is TLS-terminated with a
//! certificate from the installation's CA ([`ca`]), checked request by
//! request against the name, and forwarded to the real server
//! ([`upstream`]); port 80 is the same without TLS. Everything else is
//! refused. Every decision and request is recorded in the session.

pub mod address;
pub mod ca;
pub mod config;
pub mod keys;
pub mod names;
pub mod policy;
mod proxy;
mod quota;
pub mod scrub;
pub mod upstream;
pub mod usage;

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};

use capsem_proto::mux;
use capsem_proto::{GuestToHost, HostCodec, HostToGuest};
use futures::{SinkExt, StreamExt};
use tokio_util::codec::Framed;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::channel::Inbound;
use crate::session::EventLog;
use crate::session::events::{DnsEvent, Event, NetEvent, Reporter, Verdict};
use crate::settings::SettingsError;
use crate::workspace::Export;
use names::Names;

pub use ca::{Ca, CaError};
pub use config::NetSettings;
pub use policy::{Decision, Policy};
pub use upstream::{Upstream, UpstreamError};

/// A guest stream framed with the host's codec.
type GuestStream = Framed<Compat<mux::Stream>, HostCodec>;

/// Reads the network settings in effect now.
pub type SettingsLoader = Arc<dyn Fn() -> Result<Arc<NetSettings>, SettingsError> + Send + Sync>;

/// The crypto provider of every TLS configuration here.
fn crypto() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One VM's network service.
pub struct Network {
    shared: Arc<Shared>,
}

struct Shared {
    names: Mutex<Names>,
    ca: Arc<Ca>,
    upstream: Upstream,
    settings: SettingsLoader,
    /// Taken when the VM is done, so that stray tasks cannot keep the
    /// session's event writer waiting.
    events: Mutex<Option<EventLog>>,
    /// How many refusals, DNS answers and failures are logged.
    quotas: Mutex<quota::Quotas>,
    /// Every task serving the guest (streams, tunnels), so the end of the
    /// VM can wait for them to record what they did.
    tasks: TaskTracker,
    /// Cancels the stream tasks that outlive the VM's grace.
    stop: CancellationToken,
    /// Requests of the session in flight upstream, at most
    /// [`MAX_IN_FLIGHT`]; more wait.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Tells the user, once per switch, that the guest asked for a
    /// provider or registry they switched off.
    notice: crate::Notice,
    told: Mutex<std::collections::HashSet<String>>,
}

/// Most requests of one session waiting for or streaming their answers at
/// once. Each holds host memory (its state, flow-control buffers) for as
/// long as its server and the guest take, so a guest opening streams to a
/// server that never answers must not be able to hold more.
pub const MAX_IN_FLIGHT: usize = 64;

impl Network {
    /// A network service recording into `events`. The upstream trust
    /// store is built from the settings now; the policy is read again for
    /// every decision.
    pub fn new(
        ca: Arc<Ca>,
        settings: SettingsLoader,
        events: EventLog,
        notice: crate::Notice,
    ) -> Result<Network, UpstreamError> {
        let current = settings().map_err(|e| UpstreamError::Trust(e.to_string()))?;
        let upstream = Upstream::new(&current)?;
        Ok(Network {
            shared: Arc::new(Shared {
                names: Mutex::default(),
                ca,
                upstream,
                settings,
                events: Mutex::new(Some(events)),
                quotas: Mutex::default(),
                tasks: TaskTracker::new(),
                stop: CancellationToken::new(),
                in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
                notice,
                told: Mutex::default(),
            }),
        })
    }

    /// Serves the streams the guest opens, until the channel ends or the
    /// returned guard is dropped: its network's, and the requests for the
    /// `workspace`'s files if it has one.
    pub fn start(self, mut inbound: Inbound, workspace: Option<Arc<Export>>) -> Running {
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            while let Some(stream) = inbound.next().await {
                let shared = shared.clone();
                let workspace = workspace.clone();
                shared.tasks.clone().spawn(async move {
                    let framed = Framed::new(stream.compat(), HostCodec::new());
                    let stop = shared.stop.clone();
                    tokio::select! {
                        () = handle(framed, shared, workspace) => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
        Running {
            shared: self.shared,
            task,
        }
    }
}

/// A running network service; dropping it stops the service and its
/// recording at once ([`Running::finish`] lets it record what is in
/// flight first).
pub struct Running {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Once the VM is gone, waits up to `grace` for the requests and
    /// tunnels still in flight to end (their guest side ended with the
    /// VM) and be recorded; then cancels the rest (a request still waiting
    /// for its server is recorded as cut short) and stops.
    pub async fn finish(self, grace: std::time::Duration) {
        self.task.abort();
        let tasks = &self.shared.tasks;
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            self.shared.stop.cancel();
            if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
                tracing::warn!("network tasks still running after the VM; not recorded");
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
        let unreported = lock(&self.shared.quotas).unreported();
        for (class, count) in unreported {
            self.shared.log(unlogged(class, count));
        }
        *lock(&self.shared.events) = None;
    }
}

impl Shared {
    /// The policy's decision for `name`, with the settings in effect now
    /// (returned for what else the caller needs of them). Settings that
    /// cannot be read deny everything.
    fn decide(&self, name: &str) -> (Decision, Option<Arc<NetSettings>>) {
        match (self.settings)() {
            Ok(settings) => (settings.policy.decide(name), Some(settings)),
            Err(e) => (Decision::deny(format!("settings unreadable: {e}")), None),
        }
    }

    /// Says once per switch that `name` was refused by it (a refusal the
    /// user made and should see at once, not after a CLI's retries).
    fn tell_if_switched_off(&self, name: &str, decision: &Decision) {
        let switched = decision.rule.ends_with(".allow = false");
        if !decision.allowed && switched && lock(&self.told).insert(decision.rule.clone()) {
            (self.notice)(&format!("denied {name} ({})", decision.rule));
        }
    }

    fn name_of(&self, addr: Ipv4Addr) -> Option<String> {
        lock(&self.names).name(addr).map(str::to_owned)
    }

    /// Logs a connection or request: refusals and failures within their
    /// [`quota`].
    fn record(&self, event: NetEvent) {
        let class = match event.decision {
            Verdict::Denied => Some(quota::Class::Refusal),
            Verdict::Error => Some(quota::Class::Failure),
            Verdict::Allowed => None,
        };
        self.log_within_quota(class, Event::Net(Box::new(event.bounded())));
    }

    /// Logs `event`, within the quota of its class if it has one.
    fn log_within_quota(&self, class: Option<quota::Class>, event: Event) {
        let Some(class) = class else {
            return self.log(event);
        };
        let verdict = lock(&self.quotas).take(class, std::time::Instant::now());
        if let Some(count) = verdict.report {
            self.log(unlogged(class, count));
        }
        if verdict.log {
            self.log(event);
        }
    }

    fn log(&self, event: Event) {
        if let Some(events) = lock(&self.events).as_ref() {
            events.record(event);
        }
    }
}

/// The row that stands for `count` events of `class` the quota kept out
/// of the log.
fn unlogged(class: quota::Class, count: u64) -> Event {
    Event::Net(Box::new(NetEvent {
        protocol: class.protocol().to_owned(),
        decision: class.verdict(),
        rule: Some(format!(
            "{count} more {} not logged (at most {} per second are)",
            class.noun(),
            quota::PER_SECOND
        )),
        ..NetEvent::default()
    }))
}

pub(super) fn lock<T>(value: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    value.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Dispatches a guest stream on its first message. A stream that breaks
/// the protocol is dropped (the guest's process sees a reset).
async fn handle(mut stream: GuestStream, shared: Arc<Shared>, workspace: Option<Arc<Export>>) {
    let first = match stream.next().await {
        Some(Ok(msg)) => msg,
        Some(Err(e)) => {
            tracing::warn!("bad frame on a network stream from the guest: {e}");
            return;
        }
        None => return,
    };
    if let Err(e) = first.validate() {
        tracing::warn!("the guest broke the protocol on a network stream: {e}");
        return;
    }
    match first {
        GuestToHost::Resolve { name } => resolve(stream, &name, &shared).await,
        GuestToHost::Connect(req) => proxy::connect(stream, req, shared).await,
        GuestToHost::Blocked { .. } => blocked(first, stream, &shared).await,
        GuestToHost::Fs(req) => match workspace {
            Some(workspace) => workspace.serve(req, stream).await,
            None => tracing::warn!("the guest asked for workspace files; it has none"),
        },
        other => tracing::warn!("a guest stream cannot start with {other:?}"),
    }
}

/// Answers a DNS query: an allowed name gets its synthetic address. A
/// name that is an address in another spelling (`2130706433`) is refused
/// as raw addresses are.
async fn resolve(mut stream: GuestStream, name: &str, shared: &Shared) {
    let name = policy::normalize(name);
    let (mut decision, _) = if address::is_address_spelling(&name) {
        let why = "name.is_address: a name whose last label is a number is an IP address";
        (Decision::deny(why), None)
    } else {
        shared.decide(&name)
    };
    let address = if decision.allowed {
        lock(&shared.names).address(&name)
    } else {
        None
    };
    if decision.allowed && address.is_none() {
        decision = Decision::deny(format!("more than {} names", names::MAX_NAMES));
    }
    shared.tell_if_switched_off(&name, &decision);
    shared.log_within_quota(
        Some(quota::Class::Dns),
        Event::Dns(DnsEvent {
            name,
            allowed: decision.allowed,
            rule: decision.rule,
            address: address.map(|a| a.to_string()),
        }),
    );
    let answer = address.map(|a| a.octets());
    let _ = stream.send(HostToGuest::Resolved(answer)).await;
}

/// Records the packets the guest's firewall rejected: reports only the
/// guest makes, so stored as its claim ([`Reporter::Guest`]).
async fn blocked(first: GuestToHost, mut stream: GuestStream, shared: &Shared) {
    let mut next = Some(first);
    loop {
        let msg = match next.take() {
            Some(msg) => msg,
            None => match stream.next().await {
                Some(Ok(msg)) if msg.validate().is_ok() => msg,
                _ => return,
            },
        };
        let GuestToHost::Blocked {
            protocol,
            addr,
            port,
        } = msg
        else {
            return;
        };
        shared.record(NetEvent {
            reported_by: Reporter::Guest,
            protocol,
            ip: Some(Ipv4Addr::from(addr).to_string()),
            port,
            rule: Some("guest firewall: only TCP and DNS leave the guest".to_owned()),
            ..NetEvent::default()
        });
    }
}
