//! The network proxy's cost: per-request latency and download throughput
//! from inside the guest through capsem's proxy, next to the same local
//! server reached directly from the host with the same client (curl).
//! Plain HTTP on port 80, so the figures are the interception path itself
//! (agent, channel, host proxy), not TLS. The same client against a server
//! on the guest's own loopback gives the emulated guest's ceiling.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// Requests per latency sample set.
const REQUESTS: usize = 50;
/// The download's size.
const BIG_BYTES: usize = 100 * 1024 * 1024;
const NAME: &str = "bench.test";

pub fn measure(capsem: &Path, home: &Path) -> Result<Value> {
    let port = serve()?;
    std::fs::create_dir_all(home)?;
    std::fs::write(
        home.join("user.toml"),
        format!("[network]\nallow = \"{NAME}\"\nresolve_override = \"{NAME}=127.0.0.1:{port}\"\n"),
    )?;
    let small = |host: &str| format!("http://{host}/small");
    let big = |host: &str| format!("http://{host}/big");
    let direct = format!("127.0.0.1:{port}");
    let loop_small = |url: String| {
        format!(
            "for i in $(seq {REQUESTS}); do curl -s -o /dev/null -w '%{{time_total}}\\n' {url}; done"
        )
    };
    let host_latency = seconds(&sh(&loop_small(small(&direct)))?)?;
    let guest_latency = seconds(&in_guest(capsem, home, &loop_small(small(NAME)))?)?;
    let speed = |url: String| format!("curl -s -o /dev/null -w '%{{speed_download}}\\n' {url}");
    let host_speed = seconds(&sh(&speed(big(&direct)))?)?[0];
    let guest_speed = seconds(&in_guest(capsem, home, &speed(big(NAME)))?)?[0];
    // The guest's own ceiling under emulation: the same client against a
    // server inside the guest, on its loopback, no proxy involved.
    let local = format!(
        "head -c {BIG_BYTES} /dev/zero > /tmp/big; echo ok > /tmp/small; \
         (cd /tmp && exec python3 -m http.server 8000 -b 127.0.0.1 >/dev/null 2>&1) & \
         until curl -s -o /dev/null http://127.0.0.1:8000/small; do sleep 0.2; done; \
         {}; {}",
        loop_small(small("127.0.0.1:8000")),
        speed(big("127.0.0.1:8000"))
    );
    let mut local = seconds(&in_guest(capsem, home, &local)?)?;
    let local_speed = local.pop().unwrap_or(f64::NAN);
    let local_latency = local;
    std::fs::remove_file(home.join("user.toml"))?;
    let ms = |v: &[f64], q: f64| (percentile(v, q) * 10_000.0).round() / 10.0;
    Ok(json!({
        "requests": REQUESTS,
        "request_ms": {
            "host_direct": { "p50": ms(&host_latency, 0.5), "p99": ms(&host_latency, 0.99) },
            "guest_loopback": { "p50": ms(&local_latency, 0.5), "p99": ms(&local_latency, 0.99) },
            "guest_through_proxy": { "p50": ms(&guest_latency, 0.5), "p99": ms(&guest_latency, 0.99) },
            "overhead_p50": ms(&guest_latency, 0.5) - ms(&host_latency, 0.5),
            "overhead_p99": ms(&guest_latency, 0.99) - ms(&host_latency, 0.99),
        },
        "download_100mib_mib_per_s": {
            "host_direct": host_speed / 1048576.0,
            "guest_loopback": local_speed / 1048576.0,
            "guest_through_proxy": guest_speed / 1048576.0,
            "ratio": guest_speed / host_speed,
            "ratio_to_guest_loopback": guest_speed / local_speed,
        },
    }))
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

fn in_guest(capsem: &Path, home: &Path, script: &str) -> Result<String> {
    let out = Command::new(capsem)
        .args(["-q", script])
        .env("CAPSEM_HOME", home)
        .env("CAPSEM_CORP_CONFIG", home.join("no-corp.toml"))
        .output()?;
    if !out.status.success() {
        bail!(
            "guest benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A local HTTP/1.1 server: `/small` answers two bytes, `/big` 100 MiB.
fn serve() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the bench server")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for socket in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = answer(socket);
            });
        }
    });
    Ok(port)
}

fn answer(socket: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(socket.try_clone()?);
    let mut socket = socket;
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
        write!(socket, "HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n")?;
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            socket.write_all(&chunk[..n])?;
            left -= n;
        }
    }
}
