//! Which upstream addresses the proxy may connect to.
//!
//! A name the policy allows can still resolve, on the host, to the host
//! itself, the LAN or a cloud's metadata service (a DNS record the guest's
//! author controls under an allowed wildcard, `localhost` under allow-all).
//! The address actually connected to is therefore checked after
//! resolution: loopback, private, link-local, shared (CGNAT), multicast,
//! broadcast, reserved, documentation and benchmarking ranges, and IPv6
//! forms that embed an IPv4 address of those, are refused unless
//! `network.allow_upstream_ranges` names the range.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The rule named when an upstream address is refused.
pub const RULE: &str = "upstream.private_address";

/// Why `ip` is not an address of the public internet, or `None` if it is.
pub fn special(ip: IpAddr) -> Option<String> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => special_v4(v4).map(str::to_owned),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

/// IANA's special-purpose IPv4 ranges that are not globally reachable.
const V4: &[([u8; 4], u8, &str)] = &[
    ([0, 0, 0, 0], 8, "unspecified (\"this network\")"),
    ([10, 0, 0, 0], 8, "private"),
    ([100, 64, 0, 0], 10, "shared address space (CGNAT)"),
    ([127, 0, 0, 0], 8, "loopback"),
    ([169, 254, 0, 0], 16, "link-local (cloud metadata)"),
    ([172, 16, 0, 0], 12, "private"),
    ([192, 0, 0, 0], 24, "IETF protocol assignments"),
    ([192, 0, 2, 0], 24, "documentation"),
    ([192, 88, 99, 0], 24, "6to4 relay anycast"),
    ([192, 168, 0, 0], 16, "private"),
    ([198, 18, 0, 0], 15, "benchmarking"),
    ([198, 51, 100, 0], 24, "documentation"),
    ([203, 0, 113, 0], 24, "documentation"),
    ([224, 0, 0, 0], 4, "multicast"),
    ([240, 0, 0, 0], 4, "reserved or broadcast"),
];

/// The IPv6 ranges that are not globally reachable (those that embed an
/// IPv4 address are checked by what they embed, in [`special_v6`]).
const V6: &[([u16; 8], u8, &str)] = &[
    ([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified"),
    ([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback"),
    ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, "local-use NAT64"),
    ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only"),
    ([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "Teredo tunnel"),
    ([0x2001, 2, 0, 0, 0, 0, 0, 0], 48, "benchmarking"),
    ([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28, "ORCHID"),
    ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "documentation"),
    ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation"),
    ([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, "segment routing"),
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique local (private)"),
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local"),
    ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "site-local (private)"),
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast"),
];

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    V4.iter()
        .find(|(net, len, _)| {
            let mask = u32::MAX << (32 - u32::from(*len));
            bits & mask == u32::from_be_bytes(*net)
        })
        .map(|(_, _, why)| *why)
}

fn special_v6(ip: Ipv6Addr) -> Option<String> {
    let bits = u128::from(ip);
    let listed = V6.iter().find(|(net, len, _)| {
        let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
        bits & mask == u128::from(Ipv6Addr::from(*net))
    });
    if let Some((_, _, why)) = listed {
        return Some((*why).to_owned());
    }
    let (form, embedded) = embedded_v4(ip)?;
    special_v4(embedded).map(|why| format!("{form} of {embedded}, which is {why}"))
}

/// The IPv4 address an IPv6 address carries, in the forms that reach it:
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4
/// (`2002::/16`). (IPv4-mapped addresses are made IPv4 before this.)
fn embedded_v4(ip: Ipv6Addr) -> Option<(&'static str, Ipv4Addr)> {
    let s = ip.segments();
    let low = Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    match s {
        [0, 0, 0, 0, 0, 0, ..] => Some(("an IPv4-compatible address", low)),
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(("a NAT64 address", low)),
        [0x2002, hi, lo, ..] => Some((
            "a 6to4 address",
            Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)),
        )),
        _ => None,
    }
}

/// Ranges of non-public addresses the user lets the proxy connect to
/// (`network.allow_upstream_ranges`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(Vec<IpNet>);

/// A range that is not an address or `address/prefix`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an address range such as 10.1.0.0/16 or fd00::/8")]
pub struct BadRange(String);

impl Ranges {
    /// Parses a comma-separated list; a bare address is a range of one.
    pub fn parse(list: &str) -> Result<Ranges, BadRange> {
        list.split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(|r| {
                r.parse::<IpNet>()
                    .or_else(|_| r.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| BadRange(r.to_owned()))
            })
            .collect::<Result<_, _>>()
            .map(Ranges)
    }

    /// Whether `ip` (or the IPv4 address it maps) is in one of the ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.0
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
    }

    /// Why the proxy must not connect to `ip`, or `None` if it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<String> {
        let why = special(ip)?;
        (!self.contains(ip)).then(|| {
            format!("{RULE}: {ip} is {why}; network.allow_upstream_ranges can allow its range")
        })
    }
}

/// Whether `name` is an address written as a name: its last label is a
/// number (decimal, or hex with `0x`), as in `2130706433`, `0x7f.1`,
/// `0177.0.0.1` or `127.1`, all of which `inet_aton` reads as 127.0.0.1.
/// No top-level domain is a number, so no real name is caught.
pub fn is_address_spelling(name: &str) -> bool {
    let last = name.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> Option<String> {
        Ranges::default().refusal(ip.parse().unwrap())
    }

    #[test]
    fn every_special_range_is_refused_and_public_addresses_pass() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.255",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.251",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:2::1",
            "2001:10::1",
            "2001:db8::1",
            "3fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            let why = refused(ip).unwrap_or_else(|| panic!("{ip} was let through"));
            assert!(why.starts_with("upstream.private_address: "), "{why}");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "2002:808:808::1",
            "64:ff9b::808:808",
        ] {
            assert_eq!(refused(ip), None, "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_of_special_ipv4_addresses_are_refused() {
        for (ip, says) in [
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::127.0.0.1", "IPv4-compatible address of 127.0.0.1"),
            ("::10.0.0.1", "IPv4-compatible"),
            ("64:ff9b::7f00:1", "NAT64 address of 127.0.0.1"),
            ("64:ff9b::a9fe:a9fe", "NAT64 address of 169.254.169.254"),
            ("2002:7f00:1::1", "6to4 address of 127.0.0.1"),
            ("2002:c0a8:101::", "6to4 address of 192.168.1.1"),
        ] {
            let why = refused(ip).unwrap_or_else(|| panic!("{ip} was let through"));
            assert!(why.contains(says), "{ip}: {why}");
        }
    }

    #[test]
    fn named_ranges_are_let_through_and_nothing_else() {
        let ranges = Ranges::parse("10.1.0.0/16, 127.0.0.1, fd00::/8").unwrap();
        let ok = |ip: &str| ranges.refusal(ip.parse().unwrap()).is_none();
        assert!(ok("10.1.2.3"));
        assert!(ok("::ffff:10.1.2.3"), "a mapped address is its IPv4 one");
        assert!(ok("127.0.0.1"));
        assert!(ok("fd00::5"));
        assert!(!ok("10.2.0.1"));
        assert!(!ok("127.0.0.2"));
        assert!(!ok("169.254.169.254"));
        assert!(ok("8.8.8.8"));
        assert_eq!(Ranges::parse("").unwrap(), Ranges::default());
        for bad in ["10.0.0.0/33", "example.com", "10.0.0.0/8/8", "*"] {
            assert!(Ranges::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_spelled_as_names_are_recognised() {
        for name in [
            "2130706433",
            "0x7f.1",
            "0177.0.0.1",
            "127.1",
            "127.0.0.1",
            "127.0.0.1.",
            "0x7F000001",
            "1.2.3.0x4",
            "0x",
        ] {
            assert!(is_address_spelling(name), "{name}");
        }
        for name in ["example.com", "1.example", "123.com", "x0x1", "a.0xg", ""] {
            assert!(!is_address_spelling(name), "{name}");
        }
    }
}
