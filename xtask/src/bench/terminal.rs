//! Terminal figures: keystroke round trip and output throughput on a guest
//! terminal, next to the same output without one.

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use expectrl::{Expect, Session};
use serde_json::{Value, json};

use super::{capsem_cmd, ratio, stats};

/// Keystrokes timed per run.
const KEYSTROKES: usize = 40;
/// Bytes of output for the throughput runs.
const OUTPUT_BYTES: u64 = 32 * 1024 * 1024;

/// Median round trip of a key typed at the prompt of the shell `capsem
/// ARGS` opens: host terminal to guest line discipline (which echoes it)
/// and back.
pub fn keystroke_latency(capsem: &Path, home: &Path, args: &[&str]) -> Result<Value> {
    let mut shell = Session::spawn(capsem_cmd(capsem, home, args))
        .context("starting a capsem shell on a terminal")?;
    shell.set_expect_timeout(Some(Duration::from_secs(120)));
    shell.expect("# ")?;
    let mut samples = Vec::with_capacity(KEYSTROKES);
    for _ in 0..KEYSTROKES {
        let sent = Instant::now();
        shell.send("x")?;
        shell.expect("x")?;
        samples.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    // Ctrl-U clears the line; then leave.
    shell.send("\x15exit\r")?;
    let _ = shell.get_process().wait();
    Ok(stats(samples))
}

/// Output throughput of `head -c` from the guest, from the first byte to
/// the last, with and without a guest terminal.
pub fn throughput(capsem: &Path, home: &Path) -> Result<Value> {
    let command = format!("head -c {OUTPUT_BYTES} /dev/zero");
    let piped = mib_per_s(
        capsem_cmd(capsem, home, &["-q", &command])
            .stdout(Stdio::piped())
            .spawn()?
            .stdout
            .take()
            .context("stdout")?,
    )?;
    let mut tty = Session::spawn(capsem_cmd(
        capsem,
        home,
        &["-q", "run", "-t", "--", "sh", "-c", &command],
    ))
    .context("starting capsem run -t on a terminal")?;
    let on_tty = mib_per_s(&mut tty)?;
    let _ = tty.get_process().wait();
    let (guest_tty, guest_pipe) = in_guest(capsem, home)?;
    Ok(json!({
        "what": format!("{} MiB of `head -c` output, first byte to last", OUTPUT_BYTES >> 20),
        "pipe_mib_per_s": piped,
        "tty_mib_per_s": on_tty,
        "tty_to_pipe_ratio": ratio(on_tty, piped),
        "in_guest_pipe_mib_per_s": guest_pipe,
        "in_guest_tty_mib_per_s": guest_tty,
        "in_guest_tty_to_pipe_ratio": ratio(guest_tty, guest_pipe),
    }))
}

/// What a terminal and a pipe cost inside the guest alone: the same output
/// read from a pseudo-terminal and from a pipe by a guest process.
fn in_guest(capsem: &Path, home: &Path) -> Result<(f64, f64)> {
    let script = format!(
        "import os, pty, subprocess, time\n\
         def rate(read, start):\n\
         \x20   n = 0\n\
         \x20   while True:\n\
         \x20       try:\n\
         \x20           d = read()\n\
         \x20       except OSError:\n\
         \x20           break\n\
         \x20       if not d:\n\
         \x20           break\n\
         \x20       n += len(d)\n\
         \x20   return n / (time.time() - start) / (1 << 20)\n\
         cmd = ['head', '-c', '{OUTPUT_BYTES}', '/dev/zero']\n\
         m, s = pty.openpty()\n\
         t = time.time()\n\
         p = subprocess.Popen(cmd, stdout=s)\n\
         os.close(s)\n\
         tty = rate(lambda: os.read(m, 65536), t)\n\
         p.wait()\n\
         t = time.time()\n\
         p = subprocess.Popen(cmd, stdout=subprocess.PIPE)\n\
         pipe = rate(lambda: p.stdout.read(65536), t)\n\
         print(round(tty, 1), round(pipe, 1))\n"
    );
    let out = capsem_cmd(capsem, home, &["-q", "python3", "-c", &script]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text
        .split_whitespace()
        .filter_map(|n| n.parse::<f64>().ok());
    match (numbers.next(), numbers.next()) {
        (Some(tty), Some(pipe)) => Ok((tty, pipe)),
        _ => bail!("the in-guest measurement printed {text:?}"),
    }
}

/// Reads `out` to its end; MiB/s from the first byte on.
fn mib_per_s(mut out: impl Read) -> Result<f64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut first = None;
    loop {
        // A terminal's master reports EIO once the other side is closed.
        let n = match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(5) => break,
            Err(e) => return Err(e.into()),
        };
        first.get_or_insert_with(Instant::now);
        total += n as u64;
    }
    let Some(first) = first else {
        bail!("no output")
    };
    if total < OUTPUT_BYTES {
        bail!("only {total} of {OUTPUT_BYTES} bytes arrived");
    }
    Ok((total as f64 / (1 << 20) as f64 / first.elapsed().as_secs_f64() * 10.0).round() / 10.0)
}
