//! Local stand-ins for servers on the internet: plain HTTP and HTTPS
//! (certificates from a test CA) on 127.0.0.1, reached by the guest through
//! capsem's proxy via `network.resolve_override`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A request as the server saw it: the head lower-cased (and as sent),
/// and the body.
pub struct Request {
    pub head: String,
    pub raw_head: String,
    pub body: Vec<u8>,
}

impl Request {
    /// The request line, e.g. `get /x http/1.1`.
    pub fn line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }
}

/// What a handler answers.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    /// Headers besides the content type and length.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl From<(u16, &'static str, Vec<u8>)> for Reply {
    /// Status, content type and body.
    fn from((status, content_type, body): (u16, &'static str, Vec<u8>)) -> Reply {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }
}

/// A handler: a request in, a reply (or what converts to one) out.
pub type Handler<R> = fn(&Request) -> R;

/// Says what was asked for.
fn echo(req: &Request) -> (u16, &'static str, Vec<u8>) {
    let text = format!("hello from upstream: {}\n", req.line());
    (200, "text/plain", text.into_bytes())
}

/// A connection from the proxy, plain or TLS.
trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// Serves one connection, noting the request heads it receives.
type Serve = Arc<dyn Fn(Box<dyn Conn>, &Mutex<Vec<String>>) + Send + Sync>;

/// A server and the request heads it received.
pub struct Upstream {
    pub port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    /// Plain HTTP.
    pub fn http() -> Upstream {
        Upstream::http_with(echo)
    }

    /// Plain HTTP answering with `handler`.
    pub fn http_with<R: Into<Reply> + 'static>(handler: Handler<R>) -> Upstream {
        Upstream::start(
            None,
            Arc::new(move |conn, seen| answer(conn, seen, handler)),
        )
    }

    /// HTTPS with a certificate for `names` signed by `ca`.
    pub fn https(ca: &TestCa, names: &[&str]) -> Upstream {
        Upstream::https_with(ca, names, echo)
    }

    /// HTTPS answering with `handler`.
    pub fn https_with<R: Into<Reply> + 'static>(
        ca: &TestCa,
        names: &[&str],
        handler: Handler<R>,
    ) -> Upstream {
        let serve = Arc::new(move |conn, seen: &_| answer(conn, seen, handler));
        Upstream::start(Some(ca.server_config(names)), serve)
    }

    /// A WebSocket server over TLS that answers each text message `m` with
    /// `echo: m`.
    pub fn websocket(ca: &TestCa, names: &[&str]) -> Upstream {
        Upstream::start(Some(ca.server_config(names)), Arc::new(echo_websocket))
    }

    fn start(tls: Option<Arc<rustls::ServerConfig>>, serve: Serve) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for socket in listener.incoming().flatten() {
                let (tls, seen, serve) = (tls.clone(), seen.clone(), serve.clone());
                std::thread::spawn(move || serve(wrap(socket, tls), &seen));
            }
        });
        Upstream { port, requests }
    }

    /// The request heads received so far, lower-cased.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn wrap(socket: TcpStream, tls: Option<Arc<rustls::ServerConfig>>) -> Box<dyn Conn> {
    match tls {
        Some(config) => {
            let conn = rustls::ServerConnection::new(config).unwrap();
            Box::new(rustls::StreamOwned::new(conn, socket))
        }
        None => Box::new(socket),
    }
}

// The handshake callback's error type is tungstenite's, large or not.
#[allow(clippy::result_large_err)]
fn echo_websocket(conn: Box<dyn Conn>, seen: &Mutex<Vec<String>>) {
    use tungstenite::handshake::server::{Request, Response};
    let note = |req: &Request, res: Response| {
        let mut head = format!("{} {}\r\n", req.method(), req.uri());
        for (name, value) in req.headers() {
            head += &format!("{name}: {}\r\n", value.to_str().unwrap_or("?"));
        }
        seen.lock().unwrap().push(head.to_ascii_lowercase());
        Ok(res)
    };
    let Ok(mut ws) = tungstenite::accept_hdr(conn, note) else {
        return;
    };
    while let Ok(message) = ws.read() {
        match message {
            tungstenite::Message::Text(text) => {
                let reply = format!("echo: {}", text.as_str());
                if ws.send(reply.into()).is_err() {
                    return;
                }
            }
            tungstenite::Message::Close(_) => return,
            _ => {}
        }
    }
}

/// Reads a chunked body.
fn read_chunked(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).ok()?;
        let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// Answers requests on one connection until it closes.
fn answer<R: Into<Reply>>(
    stream: impl Read + Write,
    seen: &Mutex<Vec<String>>,
    handler: Handler<R>,
) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let raw_head = head;
        let head = raw_head.to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let body = if head.contains("transfer-encoding: chunked") {
            match read_chunked(&mut reader) {
                Some(body) => body,
                None => return,
            }
        } else {
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            body
        };
        seen.lock().unwrap().push(head.clone());
        let request = Request {
            head,
            raw_head,
            body,
        };
        let reply: Reply = handler(&request).into();
        let mut response = format!(
            "HTTP/1.1 {} X\r\ncontent-type: {}\r\ncontent-length: {}\r\n",
            reply.status,
            reply.content_type,
            reply.body.len()
        );
        for (name, value) in &reply.headers {
            response += &format!("{name}: {value}\r\n");
        }
        let mut response = (response + "\r\n").into_bytes();
        response.extend_from_slice(&reply.body);
        let stream = reader.get_mut();
        if stream
            .write_all(&response)
            .and_then(|()| stream.flush())
            .is_err()
        {
            return;
        }
    }
}

/// A CA for test servers, written to a PEM file capsem can be told to trust.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "capsem test upstream CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join("upstream-ca.pem");
        std::fs::write(&pem, cert.pem()).unwrap();
        TestCa {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}
