//! Local stand-ins for servers on the internet: plain HTTP and HTTPS
//! (certificates from a test CA) on 127.0.0.1, reached by the guest through
//! capsem's proxy via `network.resolve_override`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A server and the request heads it received.
pub struct Upstream {
    pub port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    /// Plain HTTP.
    pub fn http() -> Upstream {
        Upstream::start(None)
    }

    /// HTTPS with a certificate for `names` signed by `ca`.
    pub fn https(ca: &TestCa, names: &[&str]) -> Upstream {
        Upstream::start(Some(ca.server_config(names)))
    }

    fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for socket in listener.incoming().flatten() {
                let (tls, seen) = (tls.clone(), seen.clone());
                std::thread::spawn(move || serve(socket, tls, &seen));
            }
        });
        Upstream { port, requests }
    }

    /// The request heads received so far, lower-cased.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(socket: TcpStream, tls: Option<Arc<rustls::ServerConfig>>, seen: &Mutex<Vec<String>>) {
    match tls {
        Some(config) => {
            let conn = rustls::ServerConnection::new(config).unwrap();
            answer(rustls::StreamOwned::new(conn, socket), seen);
        }
        None => answer(socket, seen),
    }
}

/// Answers requests on one connection until it closes: the body says
/// what was asked for.
fn answer(stream: impl Read + Write, seen: &Mutex<Vec<String>>) {
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
        let head = head.to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request_line = head.lines().next().unwrap_or_default().to_owned();
        seen.lock().unwrap().push(head);
        let text = format!("hello from upstream: {request_line}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        let stream = reader.get_mut();
        if stream
            .write_all(response.as_bytes())
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
