//! Connections from the host to the servers guest programs asked for.
//!
//! The host resolves the name itself (or takes it from the test/debug
//! `network.resolve_override`), refuses addresses that are not on the
//! public internet ([`super::address`]) unless the user allowed their
//! range, verifies the server with rustls against the
//! platform's roots (plus `network.extra_upstream_ca`), and speaks HTTP/2
//! when the server offers it, HTTP/1.1 otherwise. A connection for an
//! upgrade (WebSocket) asks for HTTP/1.1 only: upgrades exist only there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use super::address::Ranges;
use super::config::NetSettings;

/// How long connecting (TCP, then TLS) to a server may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// Response bytes an HTTP/2 server may send on one stream, and on one
/// connection, before the guest takes them. With at most
/// [`super::MAX_IN_FLIGHT`] requests in flight, this bounds what a guest
/// that stops reading can make the host hold.
const STREAM_WINDOW: u32 = 512 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// The HTTP/1.1 read buffer's limit.
const H1_BUFFER: usize = 64 * 1024;

/// A request body on its way upstream.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Parses `name=ip:port, ...`.
pub fn parse_overrides(list: &str) -> Result<HashMap<String, SocketAddr>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, addr) = pair
                .split_once('=')
                .ok_or_else(|| format!("'{pair}' is not name=ip:port"))?;
            let addr = addr
                .trim()
                .parse()
                .map_err(|_| format!("'{addr}' is not ip:port"))?;
            Ok((super::policy::normalize(name.trim()), addr))
        })
        .collect()
}

/// Something went wrong reaching the server.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No address for the name.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// Every address of the name is one the proxy must not connect to.
    #[error("{0}")]
    Forbidden(String),
    /// TCP or TLS failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP handshake failed.
    #[error("HTTP handshake: {0}")]
    Http(#[from] hyper::Error),
    /// The trust store could not be built.
    #[error("upstream trust store: {0}")]
    Trust(String),
}

/// How to reach upstream servers.
pub struct Upstream {
    /// Offers HTTP/2 and HTTP/1.1.
    tls: Arc<ClientConfig>,
    /// Offers HTTP/1.1 only.
    tls_h1: Arc<ClientConfig>,
    overrides: HashMap<String, SocketAddr>,
}

/// A connection ready for requests.
pub enum Sender {
    /// HTTP/1.1: one request at a time.
    H1(http1::SendRequest<Body>),
    /// HTTP/2: requests multiplexed.
    H2(http2::SendRequest<Body>),
}

impl Sender {
    /// Whether the connection is still open.
    pub fn is_usable(&self) -> bool {
        match self {
            Sender::H1(s) => !s.is_closed(),
            Sender::H2(s) => !s.is_closed(),
        }
    }

    /// Whether an HTTP/1.1 connection is still carrying an earlier
    /// request or answer, so that it cannot take another now.
    pub fn is_busy(&self) -> bool {
        match self {
            Sender::H1(s) => !s.is_closed() && !s.is_ready(),
            Sender::H2(_) => false,
        }
    }
}

/// HTTP/1.1 on `io`, able to hand the connection over after a 101.
async fn h1<I>(io: I) -> Result<Sender, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(H1_BUFFER)
        .handshake(io)
        .await?;
    tokio::spawn(conn.with_upgrades());
    Ok(Sender::H1(sender))
}

/// A connected server: its address and the sender.
pub struct Connected {
    /// The address connected to.
    pub addr: SocketAddr,
    /// Where requests go.
    pub sender: Sender,
}

impl Connected {
    /// A second handle on an HTTP/2 connection, which carries requests side
    /// by side; `None` for HTTP/1.1.
    pub fn share(&self) -> Option<Connected> {
        match &self.sender {
            Sender::H2(s) => Some(Connected {
                addr: self.addr,
                sender: Sender::H2(s.clone()),
            }),
            Sender::H1(_) => None,
        }
    }
}

impl Upstream {
    /// Upstream access as `settings` configure it.
    pub fn new(settings: &NetSettings) -> Result<Upstream, UpstreamError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        let extra = settings.extra_upstream_ca.as_str();
        if !extra.is_empty() {
            let certs = CertificateDer::pem_file_iter(extra)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| UpstreamError::Trust(format!("{extra}: {e}")))?;
            roots.add_parsable_certificates(certs);
        }
        let mut tls = ClientConfig::builder_with_provider(super::crypto())
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamError::Trust(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls_h1 = Arc::new(tls.clone());
        tls.alpn_protocols.insert(0, b"h2".to_vec());
        Ok(Upstream {
            tls: Arc::new(tls),
            tls_h1,
            overrides: settings.overrides.clone(),
        })
    }

    /// Connects to `name`:`port`, over TLS when `tls`; HTTP/1.1 only when
    /// `h1_only` (for an upgrade). Only to a public address, or one in
    /// `ranges`.
    pub async fn connect(
        &self,
        name: &str,
        port: u16,
        tls: bool,
        h1_only: bool,
        ranges: &Ranges,
    ) -> Result<Connected, UpstreamError> {
        let addr = self.resolve(name, port, ranges).await?;
        let connect_err = |source| UpstreamError::Connect { addr, source };
        let timed_out = || connect_err(std::io::ErrorKind::TimedOut.into());
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out())?
            .map_err(connect_err)?;
        let _ = tcp.set_nodelay(true);
        if !tls {
            let sender = h1(TokioIo::new(tcp)).await?;
            return Ok(Connected { addr, sender });
        }
        let server = ServerName::try_from(name.to_owned())
            .map_err(|_| UpstreamError::Resolve(name.to_owned()))?;
        let config = if h1_only { &self.tls_h1 } else { &self.tls };
        let handshake = tokio_rustls::TlsConnector::from(config.clone()).connect(server, tcp);
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| timed_out())?
            .map_err(connect_err)?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        let sender = if h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .handshake(io)
                .await?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            h1(io).await?
        };
        Ok(Connected { addr, sender })
    }

    /// The address to connect to: the override of the name (an explicit
    /// opt-in for exactly that name), else the first address the host
    /// resolves it to that is public or in `ranges`. The address checked
    /// is the address connected to, so a record that changes between the
    /// guest's lookup and this one (DNS rebinding) changes nothing.
    async fn resolve(
        &self,
        name: &str,
        port: u16,
        ranges: &Ranges,
    ) -> Result<SocketAddr, UpstreamError> {
        if let Some(addr) = self.overrides.get(name) {
            return Ok(*addr);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
            .await
            .map_err(|_| UpstreamError::Resolve(name.to_owned()))?
            .collect();
        let mut refusal = None;
        for addr in addrs {
            match ranges.refusal(addr.ip()) {
                None => return Ok(addr),
                Some(why) => refusal = refusal.or(Some(why)),
            }
        }
        Err(refusal.map_or_else(
            || UpstreamError::Resolve(name.to_owned()),
            UpstreamError::Forbidden,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(user: &str) -> Upstream {
        let settings = crate::settings::from_user_text(user);
        Upstream::new(&NetSettings::new(&settings)).unwrap()
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_the_hosts_loopback_is_refused() {
        let refused = upstream("")
            .connect("localhost", 80, false, false, &Ranges::default())
            .await;
        let Err(UpstreamError::Forbidden(why)) = refused else {
            panic!("connected to localhost");
        };
        assert!(why.starts_with("upstream.private_address: "), "{why}");
        // Named ranges and overrides are explicit opt-ins: the connection
        // is tried (and fails, as nothing listens on port 1).
        let allowed = Ranges::parse("127.0.0.0/8, ::1").unwrap();
        let tried = upstream("")
            .connect("localhost", 1, false, false, &allowed)
            .await;
        assert!(
            matches!(tried, Err(UpstreamError::Connect { .. })),
            "{:?}",
            tried.err()
        );
        let overridden = upstream("[network]\nresolve_override = \"x.test=127.0.0.1:1\"\n")
            .connect("x.test", 80, false, false, &Ranges::default())
            .await;
        assert!(matches!(overridden, Err(UpstreamError::Connect { .. })));
    }

    #[test]
    fn overrides_parse_and_bad_ones_are_named() {
        let map = parse_overrides("a.test=127.0.0.1:8443, B.Test.=127.0.0.1:80").unwrap();
        assert_eq!(map["a.test"], "127.0.0.1:8443".parse().unwrap());
        assert!(map.contains_key("b.test"));
        assert!(parse_overrides("").unwrap().is_empty());
        assert!(
            parse_overrides("a.test")
                .unwrap_err()
                .contains("name=ip:port")
        );
        assert!(parse_overrides("a.test=nowhere").is_err());
    }
}
