//! Synthetic addresses: each allowed name gets its own address from
//! 100.64.0.0/10 for the whole session, so a guest connection to that
//! address is always tied to the name it was resolved from. A connection to
//! any other address is to a raw IP, and is refused.

use std::collections::HashMap;
use std::net::Ipv4Addr;

/// First address handed out (100.64.0.1).
const FIRST: u32 = u32::from_be_bytes([100, 64, 0, 1]);
/// Most names one session may resolve. Bounds the host's memory against a
/// guest that resolves random names.
pub const MAX_NAMES: usize = 65_536;

/// The names of one session and their addresses.
#[derive(Debug, Default)]
pub struct Names {
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
}

impl Names {
    /// The address of `name`, assigned on first use; `None` once
    /// [`MAX_NAMES`] names have been handed out.
    pub fn address(&mut self, name: &str) -> Option<Ipv4Addr> {
        if let Some(addr) = self.by_name.get(name) {
            return Some(*addr);
        }
        if self.by_name.len() >= MAX_NAMES {
            return None;
        }
        let addr = Ipv4Addr::from(FIRST + self.by_name.len() as u32);
        self.by_name.insert(name.to_owned(), addr);
        self.by_addr.insert(addr, name.to_owned());
        Some(addr)
    }

    /// The name `addr` was handed out for.
    pub fn name(&self, addr: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&addr).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_name_keeps_one_address_and_maps_back() {
        let mut names = Names::default();
        let a = names.address("a.example").unwrap();
        let b = names.address("b.example").unwrap();
        assert_ne!(a, b);
        assert_eq!(names.address("a.example"), Some(a));
        assert_eq!(names.name(b), Some("b.example"));
        assert_eq!(names.name(Ipv4Addr::new(8, 8, 8, 8)), None);
        assert!(a.octets()[0] == 100 && (64..128).contains(&a.octets()[1]));
    }

    #[test]
    fn the_pool_is_bounded() {
        let mut names = Names::default();
        for i in 0..MAX_NAMES {
            assert!(names.address(&format!("n{i}.example")).is_some());
        }
        assert_eq!(names.address("one.more"), None);
        assert!(names.address("n0.example").is_some());
        let last = names
            .address(&format!("n{}.example", MAX_NAMES - 1))
            .unwrap();
        assert!(last.octets()[1] < 128, "{last} is inside 100.64.0.0/10");
    }
}
