//! A cap on how many refusals are logged per second. A guest hammering
//! closed doors (a UDP flood, a connect loop to a raw IP, random names)
//! must not fill the host's disk with rows; what is not logged is counted,
//! and the count is logged.

use std::time::Instant;

/// Refusals logged per second at most.
pub const PER_SECOND: u32 = 100;

/// The refusals of one session.
#[derive(Debug)]
pub struct Quota {
    start: Instant,
    second: u64,
    used: u32,
    unlogged: u64,
}

/// What to do with one refusal.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Log it.
    pub log: bool,
    /// Refusals not logged since the last report; log this count now.
    pub report: Option<u64>,
}

impl Quota {
    /// A quota starting now.
    pub fn new() -> Quota {
        Quota {
            start: Instant::now(),
            second: 0,
            used: 0,
            unlogged: 0,
        }
    }

    /// Counts one refusal at `now`.
    pub fn take(&mut self, now: Instant) -> Verdict {
        let second = now.duration_since(self.start).as_secs();
        let mut report = None;
        if second != self.second {
            self.second = second;
            self.used = 0;
            report = self.unreported();
        }
        let log = self.used < PER_SECOND;
        if log {
            self.used += 1;
        } else {
            self.unlogged += 1;
        }
        Verdict { log, report }
    }

    /// Refusals not logged and not yet reported.
    pub fn unreported(&mut self) -> Option<u64> {
        Some(std::mem::take(&mut self.unlogged)).filter(|n| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_is_cut_per_second_and_counted() {
        let mut quota = Quota::new();
        let t0 = quota.start;
        let logged = (0..1000).filter(|_| quota.take(t0).log).count();
        assert_eq!(logged, PER_SECOND as usize);
        let next = quota.take(t0 + Duration::from_millis(1500));
        assert_eq!(
            next,
            Verdict {
                log: true,
                report: Some(900)
            }
        );
        assert_eq!(quota.unreported(), None);
        // The same second: 99 more fit beside the one above.
        for _ in 0..150 {
            quota.take(t0 + Duration::from_millis(1600));
        }
        assert_eq!(quota.unreported(), Some(51));
    }
}
