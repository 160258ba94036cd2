//! Reports the packets the guest's firewall rejected (UDP, ICMP, raw
//! sockets) to the host, from the kernel's log lines.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use capsem_proto::{GuestCodec, GuestToHost};
use futures::SinkExt;
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::{BLOCKED_PREFIX, Streams};

/// Reports queued before new ones are dropped: a guest flooding UDP costs
/// the host a bounded number of log rows per send to it, not memory.
const QUEUE: usize = 64;

/// Follows the kernel log and sends each rejected packet on one stream.
pub async fn serve(streams: Streams) {
    let (tx, mut rx) = mpsc::channel(QUEUE);
    std::thread::spawn(move || follow_kmsg(&tx));
    let Ok((stream, _place)) = streams.open().await else {
        return;
    };
    let mut sink = FramedWrite::new(stream.compat(), GuestCodec::new());
    while let Some(report) = rx.recv().await {
        if sink.send(report).await.is_err() {
            return;
        }
    }
}

/// Reads `/dev/kmsg` (one record per read) from now on, forever.
fn follow_kmsg(tx: &mpsc::Sender<GuestToHost>) {
    let mut kmsg = match File::open("/dev/kmsg") {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!("cannot follow the kernel log: {e}");
            return;
        }
    };
    let _ = kmsg.seek(SeekFrom::End(0));
    let mut record = vec![0u8; 8192];
    loop {
        match kmsg.read(&mut record) {
            Ok(0) => return,
            Ok(len) => {
                if let Some(report) = parse(&String::from_utf8_lossy(&record[..len])) {
                    let _ = tx.try_send(report);
                }
            }
            // EPIPE: records were overwritten before we read them.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(_) => return,
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
