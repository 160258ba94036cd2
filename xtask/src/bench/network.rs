//! The network proxy's cost: per-request latency and download throughput
//! from inside the guest through capsem's proxy, next to the same local
//! server reached directly from the host with the same client (curl).
//! Plain HTTP (port 80) gives the interception path itself (agent,
//! channel, host proxy); HTTPS (port 443) adds TLS with the guest (under
//! emulation) and with the server. The same client against a server on
//! the guest's own loopback gives the emulated guest's ceiling.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use capsem_core::net::Ca;
use serde_json::{Value, json};

use super::in_guest;

/// Requests per latency sample set.
const REQUESTS: usize = 50;
/// The download's size.
const BIG_BYTES: usize = 100 * 1024 * 1024;
/// The names the guest asks for, served over HTTP and HTTPS.
const NAME: &str = "bench.test";
const TLS_NAME: &str = "tls.bench.test";

/// One way of reaching the bench server.
struct Route {
    /// `http` or `https`.
    scheme: &'static str,
    /// The name the guest uses (the proxy picks the port).
    name: &'static str,
    /// Where the host reaches it directly, with curl's extra options.
    direct: String,
    direct_opts: String,
}

pub fn measure(capsem: &Path, home: &Path) -> Result<Value> {
    std::fs::create_dir_all(home)?;
    let ca = Ca::load_or_create(&home.join("upstream-ca")).context("the bench server's CA")?;
    let ca_pem = home.join("upstream-ca.pem");
    std::fs::write(&ca_pem, ca.cert_pem())?;
    let mut tls = (*ca.server_config(TLS_NAME)?).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let port = serve(None)?;
    let tls_port = serve(Some(Arc::new(tls)))?;
    std::fs::write(
        home.join("user.toml"),
        format!(
            "[network]\nallow = \"{NAME}, {TLS_NAME}\"\n\
             resolve_override = \"{NAME}=127.0.0.1:{port}, {TLS_NAME}=127.0.0.1:{tls_port}\"\n\
             extra_upstream_ca = \"{}\"\n",
            ca_pem.display()
        ),
    )?;
    let http = Route {
        scheme: "http",
        name: NAME,
        direct: format!("127.0.0.1:{port}"),
        direct_opts: String::new(),
    };
    let https = Route {
        scheme: "https",
        name: TLS_NAME,
        direct: format!("{TLS_NAME}:{tls_port}"),
        direct_opts: format!(
            "--cacert {} --resolve {TLS_NAME}:{tls_port}:127.0.0.1",
            ca_pem.display()
        ),
    };
    let mut report = json!({
        "requests": REQUESTS,
        "http": compare(capsem, home, &http)?,
        "https": compare(capsem, home, &https)?,
    });
    guest_loopback(capsem, home, &mut report["http"])?;
    std::fs::remove_file(home.join("user.toml"))?;
    Ok(report)
}

fn latency_loop(url: &str, opts: &str) -> String {
    format!(
        "for i in $(seq {REQUESTS}); do curl -s {opts} -o /dev/null -w '%{{time_total}}\\n' {url}; done"
    )
}

fn download(url: &str, opts: &str) -> String {
    format!("curl -s {opts} -o /dev/null -w '%{{speed_download}}\\n' {url}")
}

/// Milliseconds at the `q` quantile, to 0.1 ms.
fn ms(values: &[f64], q: f64) -> f64 {
    (percentile(values, q) * 10_000.0).round() / 10.0
}

fn quantiles(values: &[f64]) -> Value {
    json!({ "p50": ms(values, 0.5), "p99": ms(values, 0.99) })
}

/// Host-direct against guest-through-the-proxy, for one route.
fn compare(capsem: &Path, home: &Path, route: &Route) -> Result<Value> {
    let url = |host: &str, path: &str| format!("{}://{host}/{path}", route.scheme);
    let opts = &route.direct_opts;
    let host_latency = seconds(&sh(&latency_loop(&url(&route.direct, "small"), opts))?)?;
    let guest_latency = seconds(&in_guest(
        capsem,
        home,
        &latency_loop(&url(route.name, "small"), ""),
    )?)?;
    let host_speed = seconds(&sh(&download(&url(&route.direct, "big"), opts))?)?[0];
    let guest_speed = seconds(&in_guest(
        capsem,
        home,
        &download(&url(route.name, "big"), ""),
    )?)?[0];
    Ok(json!({
        "request_ms": {
            "host_direct": quantiles(&host_latency),
            "guest_through_proxy": quantiles(&guest_latency),
            "overhead_p50": ms(&guest_latency, 0.5) - ms(&host_latency, 0.5),
            "overhead_p99": ms(&guest_latency, 0.99) - ms(&host_latency, 0.99),
        },
        "download_100mib_mib_per_s": {
            "host_direct": host_speed / 1048576.0,
            "guest_through_proxy": guest_speed / 1048576.0,
            "ratio": guest_speed / host_speed,
        },
    }))
}

/// The guest's own ceiling under emulation: the same client against a
/// server inside the guest, on its loopback, no proxy involved.
fn guest_loopback(capsem: &Path, home: &Path, http: &mut Value) -> Result<()> {
    let local = "127.0.0.1:8000";
    let script = format!(
        "head -c {BIG_BYTES} /dev/zero > /tmp/big; echo ok > /tmp/small; \
         (cd /tmp && exec python3 -m http.server 8000 -b 127.0.0.1 >/dev/null 2>&1) & \
         until curl -s -o /dev/null http://{local}/small; do sleep 0.2; done; \
         {}; {}",
        latency_loop(&format!("http://{local}/small"), ""),
        download(&format!("http://{local}/big"), "")
    );
    let mut values = seconds(&in_guest(capsem, home, &script)?)?;
    let speed = values.pop().unwrap_or(f64::NAN);
    http["request_ms"]["guest_loopback"] = quantiles(&values);
    let dl = &mut http["download_100mib_mib_per_s"];
    dl["guest_loopback"] = json!(speed / 1048576.0);
    let proxied = dl["guest_through_proxy"].as_f64().unwrap_or(f64::NAN) * 1048576.0;
    dl["ratio_to_guest_loopback"] = json!(proxied / speed);
    Ok(())
}

/// The `q` quantile (nearest rank) of `values`.
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn seconds(text: &str) -> Result<Vec<f64>> {
    let values: Vec<f64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    if values.is_empty() {
        bail!("no measurements in: {text}");
    }
    Ok(values)
}

fn sh(script: &str) -> Result<String> {
    let out = Command::new("sh").args(["-c", script]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A local HTTP/1.1 server, over TLS when `tls` is given: `/small`
/// answers two bytes, `/big` 100 MiB.
fn serve(tls: Option<Arc<rustls::ServerConfig>>) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the bench server")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for socket in listener.incoming().flatten() {
            // Headers and body go out in separate writes.
            let _ = socket.set_nodelay(true);
            let tls = tls.clone();
            std::thread::spawn(move || {
                let _ = match tls.map(rustls::ServerConnection::new) {
                    Some(Ok(conn)) => answer(rustls::StreamOwned::new(conn, socket)),
                    Some(Err(_)) => Ok(()),
                    None => answer(socket),
                };
            });
        }
    });
    Ok(port)
}

fn answer(stream: impl Read + Write) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let chunk = vec![b'x'; 64 * 1024];
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let big = line.contains("/big");
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header == "\r\n" {
                break;
            }
        }
        let len = if big { BIG_BYTES } else { 2 };
        let socket = reader.get_mut();
        write!(socket, "HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n")?;
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            socket.write_all(&chunk[..n])?;
            left -= n;
        }
        socket.flush()?;
    }
}
