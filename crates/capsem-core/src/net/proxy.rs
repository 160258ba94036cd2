//! One guest connection: decided on its name and port, then served as
//! HTTP (port 80) or TLS-terminated HTTPS (port 443), each request checked
//! against the name and forwarded upstream on a connection of its own.
//! An HTTP/1.1 upgrade (WebSocket) answered with 101 turns the guest
//! connection into a tunnel to an upstream connection of its own.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use capsem_proto::{ConnectRequest, HostToGuest};
use futures::SinkExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body as HttpBody, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use super::config::NetSettings;
use super::keys;
use super::scrub::Scrubbed;
use super::upstream::{Body, Connected, Sender, UpstreamError};
use super::usage::{self, Meter, Provider};
use super::{Decision, GuestStream, Shared, lock};
use crate::session::events::{Event, ModelCall, NetEvent, Verdict};

/// How long a server may take to start answering (model APIs think
/// before their first byte).
const RESPONSE_WAIT: Duration = Duration::from_secs(600);
/// How often an open tunnel's name is decided again.
const REDECIDE: Duration = Duration::from_secs(5);
/// How long the other direction of a tunnel may go on once one has ended.
const LINGER: Duration = Duration::from_secs(1);
/// How long a guest may take to send its TLS hello.
const HELLO_WAIT: Duration = Duration::from_secs(30);
/// Requests one guest HTTP/2 connection may have open at once (clients
/// queue the rest). Each open one holds up to 16 KiB of headers while it
/// waits for its turn ([`super::MAX_IN_FLIGHT`]).
const STREAMS_PER_CONNECTION: u32 = 8;
/// Flow-control window of a guest HTTP/2 connection and of each of its
/// streams: request body bytes buffered before the guest must wait.
const GUEST_WINDOW: u32 = 64 * 1024;
/// Response bytes buffered per guest HTTP/2 stream that the guest is slow
/// to take; also the largest HTTP/1.1 read buffer.
const GUEST_BUFFER: usize = 64 * 1024;

/// What is known of a connection before its requests.
#[derive(Clone)]
struct Conn {
    name: String,
    port: u16,
    tls: bool,
    rule: String,
    pid: Option<u32>,
    process: Option<String>,
}

impl Conn {
    fn event(&self) -> NetEvent {
        NetEvent {
            pid: self.pid,
            process: self.process.clone(),
            protocol: if self.tls { "https" } else { "http" }.to_owned(),
            domain: Some(self.name.clone()),
            port: self.port,
            rule: Some(self.rule.clone()),
            ..NetEvent::default()
        }
    }
}

/// Decides a connection and, if allowed, serves it.
pub(super) async fn connect(mut stream: GuestStream, req: ConnectRequest, shared: Arc<Shared>) {
    let addr = Ipv4Addr::from(req.addr);
    let name = shared.name_of(addr);
    let decision = match (&name, req.port) {
        (None, _) => Decision::deny("raw IP address: only names the guest resolved are reachable"),
        (Some(_), port) if port != 80 && port != 443 => {
            Decision::deny("only ports 80 (HTTP) and 443 (HTTPS) are proxied")
        }
        (Some(name), _) => shared.decide(name).0,
    };
    let (pid, process) = req.process.map(|p| (p.pid, p.command)).unzip();
    if !decision.allowed {
        shared.record(NetEvent {
            pid,
            process,
            protocol: "tcp".to_owned(),
            domain: name,
            ip: Some(addr.to_string()),
            port: req.port,
            decision: Verdict::Denied,
            rule: Some(decision.rule.clone()),
            ..NetEvent::default()
        });
        let _ = stream.send(HostToGuest::Denied(decision.rule)).await;
        return;
    }
    if stream.send(HostToGuest::Connected).await.is_err() {
        return;
    }
    let parts = stream.into_parts();
    // The agent sends nothing before it reads Connected.
    if !parts.read_buf.is_empty() {
        tracing::warn!("the guest sent connection bytes before the decision");
        return;
    }
    let conn = Conn {
        name: name.expect("allowed names exist"),
        port: req.port,
        tls: req.port == 443,
        rule: decision.rule,
        pid,
        process,
    };
    if conn.tls {
        serve_tls(parts.io, conn, shared).await;
    } else {
        serve_http(parts.io, conn, shared).await;
    }
}

/// Terminates the guest's TLS with a certificate for the connection's
/// name. A hello naming another server (SNI) is refused before anything
/// goes upstream.
async fn serve_tls<I>(io: I, conn: Conn, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(HELLO_WAIT, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => return refuse(&shared, &conn, format!("bad TLS hello: {e}")),
        Err(_) => return refuse(&shared, &conn, "no TLS hello in time".to_owned()),
    };
    let sni = start
        .client_hello()
        .server_name()
        .map(super::policy::normalize);
    if let Some(sni) = sni.filter(|sni| *sni != conn.name) {
        return refuse(
            &shared,
            &conn,
            format!(
                "TLS server name {sni} is not the name resolved ({})",
                conn.name
            ),
        );
    }
    let config = match shared.ca.server_config(&conn.name) {
        Ok(config) => config,
        Err(e) => return refuse(&shared, &conn, e.to_string()),
    };
    match start.into_stream(config).await {
        Ok(tls) => serve_http(tls, conn, shared).await,
        Err(e) => tracing::debug!("TLS with the guest for {}: {e}", conn.name),
    }
}

/// Records a connection refused after it was let through.
fn refuse(shared: &Shared, conn: &Conn, why: String) {
    shared.record(NetEvent {
        decision: Verdict::Denied,
        rule: Some(why),
        ..conn.event()
    });
}

/// Serves HTTP/1.1 or HTTP/2 from the guest, forwarding each request.
async fn serve_http<I>(io: I, conn: Conn, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let upstream: Arc<Mutex<Option<Connected>>> = Arc::default();
    let executor = Tracked(shared.clone());
    let service = service_fn(move |req| {
        let (conn, shared, upstream) = (conn.clone(), shared.clone(), upstream.clone());
        async move {
            // A request waits for room before anything is built for it, so
            // that one waiting costs only itself; the work is boxed, out of
            // the waiting task.
            let Ok(permit) = shared.in_flight.clone().acquire_owned().await else {
                let stopping = "capsem: the network is stopping\n";
                return Ok(text(StatusCode::SERVICE_UNAVAILABLE, stopping));
            };
            let forwarded = Box::pin(forward(req, &conn, shared, &upstream, permit));
            Ok::<_, Infallible>(forwarded.await)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(executor);
    builder.http1().max_buf_size(GUEST_BUFFER);
    builder
        .http2()
        .max_concurrent_streams(STREAMS_PER_CONNECTION)
        .initial_connection_window_size(GUEST_WINDOW)
        .initial_stream_window_size(GUEST_WINDOW)
        .max_send_buf_size(GUEST_BUFFER);
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = served.await {
        tracing::debug!("guest HTTP connection: {e}");
    }
}

/// Runs HTTP/2 streams as tasks of the network service, so that the end of
/// the VM waits for (or cancels) them like the rest.
#[derive(Clone)]
struct Tracked(Arc<Shared>);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let stop = self.0.stop.clone();
        self.0.tasks.spawn(async move {
            tokio::select! {
                _ = future => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

/// Forwards one request, or answers it with an error the user can read.
async fn forward(
    mut req: Request<Incoming>,
    conn: &Conn,
    shared: Arc<Shared>,
    upstream: &Mutex<Option<Connected>>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response<Body> {
    let started = Instant::now();
    let mut event = NetEvent {
        method: Some(req.method().to_string()),
        path: req.uri().path_and_query().map(ToString::to_string),
        ..conn.event()
    };
    let host = request_host(&req);
    if host.as_deref() != Some(conn.name.as_str()) {
        let why = format!(
            "request for {} on a connection to {} (domain fronting)",
            host.as_deref().unwrap_or("no host"),
            conn.name
        );
        event.rule = Some(why.clone());
        return refused(&shared, event, StatusCode::MISDIRECTED_REQUEST, why);
    }
    // Each request is decided again, so that a policy change reaches the
    // connections already open (agents keep theirs for the whole session).
    let (decision, settings) = shared.decide(&conn.name);
    let settings = match settings {
        Some(settings) if decision.allowed => settings,
        _ => {
            shared.tell_if_switched_off(&conn.name, &decision);
            let why = format!("{} is not allowed ({})", conn.name, decision.rule);
            event.rule = Some(decision.rule);
            return refused(&shared, event, StatusCode::FORBIDDEN, why);
        }
    };
    event.rule = Some(decision.rule);
    let upgrade = upgrade_of(&req).map(|protocol| (protocol, hyper::upgrade::on(&mut req)));
    let sent = Arc::new(AtomicU64::new(0));
    let (mut parts, body) = req.into_parts();
    let keyed = settings.keyed_host(&conn.name);
    event.key_fingerprint = give_key(&mut parts, conn, &settings, upgrade.is_some(), keyed);
    let call = model_call(&parts, conn);
    let bodies = (settings.body_limit > 0).then(|| Bodies::new(settings.body_limit));
    let request_tap = tap(
        call.as_ref().map(|(_, meter)| meter.clone()),
        bodies.as_ref().map(|b| (b.limit, b.request.clone())),
        |meter, data| meter.request(data),
    );
    let body = Metered::new(body, sent.clone(), request_tap, None).boxed();
    let protocol = upgrade.as_ref().map(|(protocol, _)| protocol.clone());
    let waiting = Unanswered {
        shared: &shared,
        event: &event,
        started,
    };
    let answer = round_trip(parts, body, conn, &shared, upstream, protocol, &settings).await;
    std::mem::forget(waiting);
    let response = match answer {
        Ok((response, addr)) => {
            event.ip = Some(addr.ip().to_string());
            response
        }
        Err(failure) => {
            event.ip = failure.addr.map(|a| a.ip().to_string());
            if failure.refused {
                event.rule = Some(failure.why.clone());
                return refused(&shared, event, StatusCode::FORBIDDEN, failure.why);
            }
            return failed(&shared, event, started, failure.why);
        }
    };
    event.status = Some(response.status().as_u16());
    event.decision = Verdict::Allowed;
    let compressed = compressed(response.headers());
    if keyed && compressed {
        let why = "the server compressed an answer on a host API keys go to (it could not be checked for the key)";
        return failed(&shared, event, started, why.to_owned());
    }
    if let Some((protocol, guest)) = upgrade
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        // The server must switch to what was asked, not to, say, h2c.
        if response.headers().get(header::UPGRADE) != Some(&protocol) {
            let why = "the server switched to another protocol than WebSocket";
            return failed(&shared, event, started, why.to_owned());
        }
        return tunnel(guest, response, protocol, event, started, &settings, shared);
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = match &settings.scrubber {
        Some(scrubber) => {
            scrubber.headers(&mut parts.headers);
            if compressed {
                body.boxed()
            } else {
                Scrubbed::new(body, scrubber.clone()).boxed()
            }
        }
        None => body.boxed(),
    };
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    if let Some((_, meter)) = &call {
        let content_type = parts.headers.get(header::CONTENT_TYPE);
        lock(meter).response_type(content_type.and_then(|v| v.to_str().ok()).unwrap_or(""));
    }
    let response_tap = tap(
        call.as_ref().map(|(_, meter)| meter.clone()),
        bodies.as_ref().map(|b| (b.limit, b.response.clone())),
        |meter, data| meter.response(data),
    );
    let done = Box::new(move |cut: Option<String>| {
        drop(permit);
        event.error = cut;
        event.bytes_up = sent.load(Ordering::Relaxed);
        event.bytes_down = counted.load(Ordering::Relaxed);
        let duration = started.elapsed().as_micros() as u64;
        event.duration_us = Some(duration);
        if let Some(bodies) = bodies {
            (event.request_body, event.response_body) = bodies.text();
        }
        if let Some((provider, meter)) = call {
            let usage = lock(&meter).finish();
            shared.log(Event::Model(Box::new(ModelCall {
                provider: provider.name().to_owned(),
                cost_usd: usage::cost(&usage),
                model: usage.model,
                path: event.path.clone(),
                status: event.status,
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                stop_reason: usage.stop_reason,
                duration_us: duration,
                key_fingerprint: event.key_fingerprint.clone(),
            })));
        }
        shared.record(event);
    });
    let body = Metered::new(body, received, response_tap, Some(done));
    Response::from_parts(parts, body.boxed())
}

/// Puts the API key in a request where it may go: over TLS, not in an
/// upgrade (a tunnel's bytes are not scrubbed), to one of the provider's
/// API hosts, in the provider's carriers. A request to a host keys go to
/// (`keyed`) asks for an uncompressed answer, which can be scrubbed.
/// Returns the fingerprint of the key put in.
fn give_key(
    parts: &mut http::request::Parts,
    conn: &Conn,
    settings: &NetSettings,
    upgrade: bool,
    keyed: bool,
) -> Option<String> {
    if keyed {
        let identity = HeaderValue::from_static("identity");
        parts.headers.insert(header::ACCEPT_ENCODING, identity);
    }
    if !conn.tls || upgrade {
        return None;
    }
    keys::swap(parts, &settings.secrets_for(&conn.name))
}

/// Whether a body comes with a content coding (gzip, br...).
fn compressed(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// Records a request refused by its rule and answers it with `status`
/// and why.
fn refused(
    shared: &Shared,
    mut event: NetEvent,
    status: StatusCode,
    why: String,
) -> Response<Body> {
    event.decision = Verdict::Denied;
    shared.record(event);
    text(status, &format!("capsem: {why}\n"))
}

/// Why a request did not get an answer from its server.
struct Failure {
    /// The server's address, when it got that far.
    addr: Option<SocketAddr>,
    /// What happened.
    why: String,
    /// Whether a rule refused it (the server's address is not public).
    refused: bool,
}

impl Failure {
    fn at(addr: SocketAddr, why: String) -> Failure {
        Failure {
            addr: Some(addr),
            why,
            refused: false,
        }
    }
}

impl From<UpstreamError> for Failure {
    fn from(e: UpstreamError) -> Failure {
        Failure {
            addr: None,
            refused: matches!(e, UpstreamError::Forbidden(_)),
            why: e.to_string(),
        }
    }
}

/// Sends a request upstream, on the guest connection's upstream
/// connection when it can take it ([`checkout`]); an upgrade (`upgrade`
/// is its protocol) gets a connection of its own, as the tunnel will take
/// it over. Returns the answer and the server's address.
async fn round_trip(
    parts: http::request::Parts,
    body: Body,
    conn: &Conn,
    shared: &Shared,
    upstream: &Mutex<Option<Connected>>,
    upgrade: Option<HeaderValue>,
    settings: &NetSettings,
) -> Result<(Response<Incoming>, SocketAddr), Failure> {
    let connect = || {
        let ranges = &settings.upstream_ranges;
        let h1_only = upgrade.is_some();
        shared
            .upstream
            .connect(&conn.name, conn.port, conn.tls, h1_only, ranges)
    };
    let mut connected = match upgrade {
        Some(_) => connect().await?,
        None => checkout(upstream, connect).await?,
    };
    let addr = connected.addr;
    let h2 = matches!(connected.sender, Sender::H2(_));
    let mut request =
        upstream_request(parts, body, conn, h2).map_err(|why| Failure::at(addr, why))?;
    if let Some(protocol) = &upgrade {
        set_upgrade(request.headers_mut(), protocol.clone());
    }
    let response = match &mut connected.sender {
        Sender::H1(s) => tokio::time::timeout(RESPONSE_WAIT, s.send_request(request)).await,
        Sender::H2(s) => tokio::time::timeout(RESPONSE_WAIT, s.send_request(request)).await,
    };
    if upgrade.is_none() {
        checkin(upstream, connected).await;
    }
    match response {
        Ok(Ok(response)) => Ok((response, addr)),
        Ok(Err(e)) => Err(Failure::at(addr, e.to_string())),
        Err(_) => {
            let why = format!("no response within {} s", RESPONSE_WAIT.as_secs());
            Err(Failure::at(addr, why))
        }
    }
}

/// A connection for one request of a guest connection: its upstream
/// connection when that is open and free (HTTP/2 always is: a clone stays
/// behind for the other requests), else a new one. An HTTP/1.1 connection
/// carries one exchange at a time, so a request that finds it busy does
/// not wait behind an answer that may take minutes; it connects anew.
async fn checkout<F>(
    upstream: &Mutex<Option<Connected>>,
    connect: impl FnOnce() -> F,
) -> Result<Connected, Failure>
where
    F: std::future::Future<Output = Result<Connected, UpstreamError>>,
{
    let mut slot = upstream.lock().await;
    let connected = match slot.take() {
        Some(c) if c.sender.is_usable() && !c.sender.is_busy() => c,
        kept => {
            *slot = kept.filter(|c| c.sender.is_usable());
            connect().await?
        }
    };
    if let Some(shared) = connected.share() {
        *slot = Some(shared);
    }
    Ok(connected)
}

/// Puts an HTTP/1.1 connection back for the guest connection's next
/// requests, once its answer has started, unless another took its place.
async fn checkin(upstream: &Mutex<Option<Connected>>, connected: Connected) {
    let mut slot = upstream.lock().await;
    if slot.as_ref().is_none_or(|c| !c.sender.is_usable()) {
        *slot = Some(connected);
    }
}

/// Records a request as cut short if it is dropped while it waits for its
/// answer (the guest connection or the VM ended first). Forgotten once the
/// answer arrives: from there the request is recorded by its own path.
struct Unanswered<'a> {
    shared: &'a Shared,
    event: &'a NetEvent,
    started: Instant,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let error = "cut short: the guest went away before the server answered";
        record_failure(self.shared, self.event.clone(), self.started, error.into());
    }
}

/// The meter of a model API call, when the request is one.
fn model_call(
    parts: &http::request::Parts,
    conn: &Conn,
) -> Option<(Provider, Arc<StdMutex<Meter>>)> {
    if parts.method != http::Method::POST {
        return None;
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let provider = usage::provider_of(&conn.name, path)?;
    Some((provider, Arc::new(StdMutex::new(Meter::new(path)))))
}

/// The first bytes of a request's and its response's bodies, for the log
/// (each capped at `limit` as it is captured).
struct Bodies {
    limit: usize,
    request: Arc<StdMutex<Vec<u8>>>,
    response: Arc<StdMutex<Vec<u8>>>,
}

impl Bodies {
    fn new(limit: usize) -> Bodies {
        Bodies {
            limit,
            request: Arc::default(),
            response: Arc::default(),
        }
    }

    /// Both bodies as text (invalid UTF-8 replaced).
    fn text(&self) -> (Option<String>, Option<String>) {
        let text =
            |body: &StdMutex<Vec<u8>>| Some(String::from_utf8_lossy(&lock(body)).into_owned());
        (text(&self.request), text(&self.response))
    }
}

/// A tap feeding a model-call meter and a body capture, either optional.
fn tap(
    meter: Option<Arc<StdMutex<Meter>>>,
    capture: Option<(usize, Arc<StdMutex<Vec<u8>>>)>,
    feed: fn(&mut Meter, &[u8]),
) -> Option<Tap> {
    if meter.is_none() && capture.is_none() {
        return None;
    }
    Some(Box::new(move |data: &[u8]| {
        if let Some(meter) = &meter {
            feed(&mut lock(meter), data);
        }
        if let Some((limit, capture)) = &capture {
            let mut kept = lock(capture);
            let room = limit.saturating_sub(kept.len());
            kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }))
}

/// The `Upgrade` header of an HTTP/1.1 request that asks for a WebSocket
/// (`Connection: upgrade`, `Upgrade: websocket`). Other upgrades are not
/// passed on: after a switch to, say, h2c the bytes would be HTTP requests
/// for any name the server fronts, past the checks made per request.
fn upgrade_of<B>(req: &Request<B>) -> Option<HeaderValue> {
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = req.headers().get(header::UPGRADE)?;
    let websocket = protocol.as_bytes().eq_ignore_ascii_case(b"websocket");
    (req.version() == http::Version::HTTP_11 && asks && websocket).then(|| protocol.clone())
}

/// Puts back the headers of an upgrade that hop-by-hop stripping removed.
fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Answers the guest's upgrade with the server's 101 and, once both sides
/// have switched, carries bytes between them until either ends. The event
/// is recorded then, with the bytes each way.
fn tunnel(
    guest: OnUpgrade,
    mut response: Response<Incoming>,
    protocol: HeaderValue,
    mut event: NetEvent,
    started: Instant,
    settings: &NetSettings,
    shared: Arc<Shared>,
) -> Response<Body> {
    let server = hyper::upgrade::on(&mut response);
    // WebSocket is the only upgrade passed on; its URI schemes.
    let scheme = if event.protocol == "https" {
        "wss"
    } else {
        "ws"
    };
    event.protocol = scheme.to_owned();
    shared.tasks.clone().spawn(async move {
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let name = event.domain.clone().unwrap_or_default();
        let ended = tokio::select! {
            result = relay(guest, server, &up, &down) => result,
            why = revoked(&shared, &name) => Err(why),
            () = shared.stop.cancelled() => Err("cut short: the VM stopped".to_owned()),
        };
        if let Err(e) = ended {
            event.error = Some(e);
        }
        event.bytes_up = up.into_inner();
        event.bytes_down = down.into_inner();
        event.duration_us = Some(started.elapsed().as_micros() as u64);
        shared.record(event);
    });
    let (mut parts, _) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(scrubber) = &settings.scrubber {
        scrubber.headers(&mut parts.headers);
    }
    set_upgrade(&mut parts.headers, protocol);
    let empty = Full::new(Bytes::new()).map_err(|never| match never {});
    Response::from_parts(parts, empty.boxed())
}

/// Returns once the policy no longer allows `name`: a tunnel is not made
/// of requests, so it is decided again every [`REDECIDE`] instead.
async fn revoked(shared: &Shared, name: &str) -> String {
    loop {
        tokio::time::sleep(REDECIDE).await;
        let (decision, _) = shared.decide(name);
        if !decision.allowed {
            return format!("closed: the policy no longer allows it ({})", decision.rule);
        }
    }
}

/// Relays an upgraded connection both ways. A side that ends its sending
/// is passed on as a half close, and the other direction then has
/// [`LINGER`] to finish; an error ends both.
async fn relay(
    guest: OnUpgrade,
    server: OnUpgrade,
    up: &AtomicU64,
    down: &AtomicU64,
) -> Result<(), String> {
    let guest = guest.await.map_err(|e| format!("guest upgrade: {e}"))?;
    let server = server.await.map_err(|e| format!("server upgrade: {e}"))?;
    let (guest_read, guest_write) = tokio::io::split(TokioIo::new(guest));
    let (server_read, server_write) = tokio::io::split(TokioIo::new(server));
    let to_server = pump(guest_read, server_write, up);
    let to_guest = pump(server_read, guest_write, down);
    tokio::pin!(to_server, to_guest);
    let rest = |other| async move { tokio::time::timeout(LINGER, other).await.unwrap_or(Ok(())) };
    let result = tokio::select! {
        r = &mut to_server => match r { Ok(()) => rest(to_guest).await, e => e },
        r = &mut to_guest => match r { Ok(()) => rest(to_server).await, e => e },
    };
    result.map_err(|e| e.to_string())
}

/// Copies `from` to `to` until `from` ends, then ends `to`, counting. A
/// TLS peer that closes without `close_notify` has ended too: WebSocket
/// peers often do, after their own close handshake.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    count: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            read => read?,
        };
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Records a request that could not be forwarded and answers 502.
fn failed(shared: &Shared, event: NetEvent, started: Instant, error: String) -> Response<Body> {
    let message = format!(
        "capsem: cannot reach {}: {error}\n",
        event.domain.as_deref().unwrap_or("?")
    );
    record_failure(shared, event, started, error);
    text(StatusCode::BAD_GATEWAY, &message)
}

fn record_failure(shared: &Shared, mut event: NetEvent, started: Instant, error: String) {
    event.decision = Verdict::Error;
    event.duration_us = Some(started.elapsed().as_micros() as u64);
    event.error = Some(error);
    shared.record(event);
}

/// The host a request is for: the authority of an absolute URI (HTTP/2,
/// proxy-style requests), else the Host header; without the port.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.host().to_owned())
        .or_else(|| {
            let host = req.headers().get(header::HOST)?.to_str().ok()?;
            let uri: Uri = format!("http://{host}/").parse().ok()?;
            uri.host().map(str::to_owned)
        })?;
    Some(super::policy::normalize(&authority))
}

/// The request as the upstream connection's protocol wants it: HTTP/1.1
/// in origin form with a Host header, HTTP/2 with the scheme and authority
/// of the connection (`OPTIONS *` keeps its asterisk form).
fn upstream_request(
    mut parts: http::request::Parts,
    body: Body,
    conn: &Conn,
    h2: bool,
) -> Result<Request<Body>, String> {
    strip_hop_by_hop(&mut parts.headers);
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let default_port = if conn.tls { 443 } else { 80 };
    let authority = if conn.port == default_port {
        conn.name.clone()
    } else {
        format!("{}:{}", conn.name, conn.port)
    };
    let authority: http::uri::Authority = authority.parse().map_err(|e| format!("{e}"))?;
    let uri = if h2 {
        parts.version = http::Version::HTTP_2;
        parts.headers.remove(header::HOST);
        let scheme = if conn.tls { "https" } else { "http" };
        Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path)
            .build()
    } else {
        parts.version = http::Version::HTTP_11;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
        parts.headers.insert(header::HOST, host);
        Uri::builder().path_and_query(path).build()
    };
    parts.uri = uri.map_err(|e| format!("cannot forward this request: {e}"))?;
    Ok(Request::from_parts(parts, body))
}

/// Removes the headers that describe one hop, not the message.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    for name in listed {
        headers.remove(name.as_str());
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// A short plain-text answer from capsem itself.
fn text(status: StatusCode, message: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(message.to_owned()))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Runs once when a response ends, however it ends: with what cut it
/// short, if it did not end cleanly.
type OnDone = Box<dyn FnOnce(Option<String>) + Send + Sync>;
/// Sees a copy of each data frame.
type Tap = Box<dyn FnMut(&[u8]) + Send + Sync>;

/// A body that counts its data bytes as they pass.
struct Metered<B: HttpBody> {
    inner: B,
    count: Arc<AtomicU64>,
    tap: Option<Tap>,
    done: Option<OnDone>,
}

impl<B: HttpBody> Metered<B> {
    fn new(inner: B, count: Arc<AtomicU64>, tap: Option<Tap>, done: Option<OnDone>) -> Self {
        Metered {
            inner,
            count,
            tap,
            done,
        }
    }

    fn finish(&mut self, cut: Option<String>) {
        if let Some(done) = self.done.take() {
            done(cut);
        }
    }
}

impl<B: HttpBody> Drop for Metered<B> {
    fn drop(&mut self) {
        let cut = (!self.inner.is_end_stream())
            .then(|| "cut short: the guest went away before the end of the body".to_owned());
        self.finish(cut);
    }
}

impl<B> HttpBody for Metered<B>
where
    B: HttpBody<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                    if let Some(tap) = this.tap.as_mut() {
                        tap(data);
                    }
                }
            }
            Poll::Ready(None) => this.finish(None),
            Poll::Ready(Some(Err(e))) => this.finish(Some(e.to_string())),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_a_request_comes_from_its_uri_or_host_header() {
        let req = Request::get("https://API.example.com:443/v1")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("api.example.com"));
        let req = Request::get("/v1")
            .header("host", "api.example.com:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("api.example.com"));
        let req = Request::get("/v1").body(()).unwrap();
        assert_eq!(request_host(&req), None);
    }

    #[test]
    fn only_http1_websocket_upgrades_are_recognised() {
        let request = |version, connection: &str, upgrade: &str| {
            Request::builder()
                .version(version)
                .header(header::CONNECTION, connection)
                .header(header::UPGRADE, upgrade)
                .body(())
                .unwrap()
        };
        let ws = request(http::Version::HTTP_11, "keep-alive, Upgrade", "WebSocket");
        assert_eq!(upgrade_of(&ws).unwrap(), "WebSocket");
        let h2c = request(http::Version::HTTP_11, "Upgrade", "h2c");
        assert_eq!(upgrade_of(&h2c), None);
        let unasked = request(http::Version::HTTP_11, "keep-alive", "websocket");
        assert_eq!(upgrade_of(&unasked), None);
        let h2 = request(http::Version::HTTP_2, "upgrade", "websocket");
        assert_eq!(upgrade_of(&h2), None);
    }

    fn conn(port: u16, tls: bool) -> Conn {
        Conn {
            name: "api.example.com".into(),
            port,
            tls,
            rule: String::new(),
            pid: None,
            process: None,
        }
    }

    fn forwarded(req: Request<()>, conn: &Conn, h2: bool) -> Request<Body> {
        let (parts, ()) = req.into_parts();
        let body = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed();
        upstream_request(parts, body, conn, h2).unwrap()
    }

    #[test]
    fn upstream_requests_are_built_from_parts_not_strings() {
        let star = || {
            Request::options("*")
                .header("host", "api.example.com")
                .body(())
                .unwrap()
        };
        let h2 = forwarded(star(), &conn(443, true), true);
        assert_eq!(h2.uri().scheme_str(), Some("https"));
        assert_eq!(h2.uri().authority().unwrap(), "api.example.com");
        assert_eq!(h2.uri().path_and_query().unwrap(), "*");
        let h1 = forwarded(star(), &conn(443, true), false);
        assert_eq!(h1.uri(), "*");
        assert_eq!(h1.headers()["host"], "api.example.com");
        let req = Request::get("/a?b=c").body(()).unwrap();
        let other_port = forwarded(req, &conn(8080, false), true);
        assert_eq!(other_port.uri(), "http://api.example.com:8080/a?b=c");
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("authorization", HeaderValue::from_static("Bearer k"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("authorization"));
    }
}
