//! The disk one session may take (`sessions.max_session_mib`): its event
//! database and its terminal transcript draw from one budget. What the
//! guest can make the host record (requests, lookups, output) is thereby
//! bounded; what arrives once the budget is spent is counted, not kept,
//! and the counts are stored with the session.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes a session may still record.
#[derive(Debug)]
pub struct Budget {
    left: AtomicU64,
    limit: u64,
}

impl Budget {
    /// A budget of `mib` MiB.
    pub fn mib(mib: u32) -> Budget {
        let limit = u64::from(mib) * 1024 * 1024;
        Budget {
            left: AtomicU64::new(limit),
            limit,
        }
    }

    /// Takes `bytes` if that many are left; whether it did.
    pub fn take(&self, bytes: u64) -> bool {
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }

    /// The whole budget in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

impl Default for Budget {
    /// No practical limit (tools and tests that record without a session).
    fn default() -> Budget {
        Budget {
            left: AtomicU64::new(u64::MAX),
            limit: u64::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_gives_out_what_it_has_and_then_nothing() {
        let budget = Budget::mib(1);
        assert!(budget.take(1024 * 1024 - 10));
        assert!(!budget.take(11), "more than is left");
        assert!(budget.take(10));
        assert!(!budget.take(1));
        assert_eq!(budget.limit(), 1024 * 1024);
    }
}
