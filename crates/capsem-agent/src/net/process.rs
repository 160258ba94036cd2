//! Which guest process owns a connection, from `/proc`.
//!
//! Best effort: a process may exit or pass its socket on before we look.
//! The answer only labels the host's log; no decision depends on it.

use std::fs;
use std::net::{SocketAddr, SocketAddrV4};

use capsem_proto::ProcessInfo;
use capsem_proto::limits::MAX_TEXT_BYTES;

/// The process whose socket goes from `local` to `remote`.
pub fn owner_of(local: SocketAddr, remote: SocketAddrV4) -> Option<ProcessInfo> {
    let SocketAddr::V4(local) = local else {
        return None;
    };
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = socket_inode(&table, local, remote)?;
    let pid = pid_holding(inode)?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(ProcessInfo {
        pid,
        command: command_line(&cmdline),
    })
}

/// The inode of the socket `local -> remote` in a `/proc/net/tcp` table.
fn socket_inode(table: &str, local: SocketAddrV4, remote: SocketAddrV4) -> Option<u64> {
    let (local, remote) = (hex_addr(local), hex_addr(remote));
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let matches =
            fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str());
        matches.then(|| fields.get(9)?.parse().ok()).flatten()
    })
}

/// An address as `/proc/net/tcp` prints it: the raw 32-bit value in host
/// order, then the port.
fn hex_addr(addr: SocketAddrV4) -> String {
    let raw = u32::from_ne_bytes(addr.ip().octets());
    format!("{raw:08X}:{:04X}", addr.port())
}

/// The first process with a descriptor on socket `inode`.
fn pid_holding(inode: u64) -> Option<u32> {
    let target = format!("socket:[{inode}]");
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let fds = fs::read_dir(entry.path().join("fd")).ok()?;
        fds.flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == &*target))
            .then_some(pid)
    })
}

/// Arguments joined by spaces, cut to what the protocol carries.
fn command_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut line = text.trim_end_matches('\0').replace('\0', " ");
    if line.len() > MAX_TEXT_BYTES {
        let mut cut = MAX_TEXT_BYTES;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100000A:A2C4 64004064:01BB 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn finds_the_socket_of_a_connection() {
        let local: SocketAddrV4 = "10.0.0.1:41668".parse().unwrap();
        let remote: SocketAddrV4 = "100.64.0.100:443".parse().unwrap();
        assert_eq!(socket_inode(TABLE, local, remote), Some(2222));
        let other: SocketAddrV4 = "100.64.0.100:80".parse().unwrap();
        assert_eq!(socket_inode(TABLE, local, other), None);
    }

    #[test]
    fn command_lines_are_joined_and_bounded() {
        assert_eq!(
            command_line(b"curl\0-s\0https://x/\0"),
            "curl -s https://x/"
        );
        let long = "é".repeat(MAX_TEXT_BYTES);
        assert!(command_line(long.as_bytes()).len() <= MAX_TEXT_BYTES);
    }
}
