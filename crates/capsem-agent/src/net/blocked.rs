//! Reports the packets the guest's firewall rejected (UDP, ICMP, raw
//! sockets) to the host, from the kernel's log lines.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use anyhow::{Context, Result};
use capsem_proto::{GuestCodec, GuestToHost};
use futures::SinkExt;
use tokio_util::codec::FramedWrite;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::{BLOCKED_PREFIX, Streams};
use crate::pipe::PipeReader;

/// Follows the kernel log from now on and sends each rejected packet on
/// one stream. While the host is slow to take reports, the kernel's ring
/// overwrites the records not yet read: a guest flooding UDP costs the
/// host a bounded number of log rows, not memory.
pub async fn serve(streams: Streams) {
    if let Err(e) = follow_kmsg(streams).await {
        tracing::warn!("reporting rejected packets stopped: {e:#}");
    }
}

async fn follow_kmsg(streams: Streams) -> Result<()> {
    let mut kmsg = File::open("/dev/kmsg").context("opening the kernel log")?;
    kmsg.seek(SeekFrom::End(0))?;
    let kmsg = PipeReader::new(kmsg)?;
    let (stream, _place) = streams.open().await?;
    let mut sink = FramedWrite::new(stream.compat(), GuestCodec::new());
    // One record per read.
    let mut record = vec![0u8; 8192];
    loop {
        match kmsg.read(&mut record).await {
            Ok(0) => return Ok(()),
            Ok(len) => {
                if let Some(report) = parse(&String::from_utf8_lossy(&record[..len])) {
                    sink.send(report).await?;
                }
            }
            // EPIPE: records were overwritten before we read them.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(e) => return Err(e).context("reading the kernel log"),
        }
    }
}

/// A rejected packet from a kernel log record
/// (`prio,seq,time,flags;capsem-blocked: ... DST=a.b.c.d ... PROTO=UDP ... DPT=n`).
/// Records from user space (facility other than kernel) are ignored: a
/// guest process may write to the log, but not as the kernel.
fn parse(record: &str) -> Option<GuestToHost> {
    let (header, text) = record.split_once(';')?;
    let prio: u32 = header.split(',').next()?.parse().ok()?;
    if prio >> 3 != 0 {
        return None;
    }
    let text = text.lines().next()?.strip_prefix(BLOCKED_PREFIX)?;
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
    };
    let addr: std::net::Ipv4Addr = field("DST")?.parse().ok()?;
    Some(GuestToHost::Blocked {
        protocol: field("PROTO")?.to_ascii_lowercase(),
        addr: addr.octets(),
        port: field("DPT").and_then(|p| p.parse().ok()).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_records_of_rejected_packets_are_parsed() {
        let udp = "6,812,2718281,-;capsem-blocked: IN= OUT=dummy0 SRC=10.0.0.1 DST=8.8.8.8 LEN=29 TOS=0x00 PREC=0x00 TTL=64 ID=1 DF PROTO=UDP SPT=40000 DPT=443 LEN=9 \n";
        assert_eq!(
            parse(udp),
            Some(GuestToHost::Blocked {
                protocol: "udp".into(),
                addr: [8, 8, 8, 8],
                port: 443
            })
        );
        let icmp = "6,813,2718282,-;capsem-blocked: IN= OUT=dummy0 SRC=10.0.0.1 DST=1.1.1.1 LEN=84 PROTO=ICMP TYPE=8 CODE=0 ID=7 SEQ=1 \n";
        assert!(matches!(
            parse(icmp),
            Some(GuestToHost::Blocked { port: 0, .. })
        ));
    }

    #[test]
    fn records_from_user_space_or_other_text_are_ignored() {
        let forged = "14,900,1,-;capsem-blocked: DST=1.2.3.4 PROTO=UDP DPT=1\n";
        assert_eq!(parse(forged), None);
        assert_eq!(parse("6,1,1,-;eth0: link up\n"), None);
        assert_eq!(parse("garbage"), None);
    }
}
