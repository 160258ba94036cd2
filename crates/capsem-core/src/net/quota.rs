//! A cap on how many of the rows a guest can produce at will are logged
//! per second: refusals (a UDP flood, a connect loop to a raw IP), DNS
//! answers (random names) and failed requests (a loop against a closed
//! port). A guest must not fill the host's disk with them; what is not
//! logged is counted, and the count is logged. Allowed requests are not
//! capped here (each is real traffic the user wants to see); the session's
//! byte budget ([`crate::session::Budget`]) bounds everything.

use std::time::Instant;

use crate::session::events::Verdict;

/// Rows of one class logged per second at most.
pub const PER_SECOND: u32 = 100;

/// What a row is, for its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A connection, request or packet refused.
    Refusal,
    /// A DNS query, answered or not.
    Dns,
    /// An allowed request that failed.
    Failure,
}

impl Class {
    const ALL: [Class; 3] = [Class::Refusal, Class::Dns, Class::Failure];

    /// What the rows are called in the note that counts them.
    pub fn noun(self) -> &'static str {
        match self {
            Class::Refusal => "refusals",
            Class::Dns => "DNS queries",
            Class::Failure => "failed requests",
        }
    }

    /// The protocol column of that note.
    pub fn protocol(self) -> &'static str {
        match self {
            Class::Dns => "dns",
            Class::Refusal | Class::Failure => "any",
        }
    }

    /// The verdict of that note.
    pub fn verdict(self) -> Verdict {
        match self {
            Class::Refusal | Class::Dns => Verdict::Denied,
            Class::Failure => Verdict::Error,
        }
    }
}

/// The quotas of one session, one per class.
#[derive(Debug, Default)]
pub struct Quotas([Quota; 3]);

impl Quotas {
    /// Counts one row of `class` at `now`.
    pub fn take(&mut self, class: Class, now: Instant) -> Take {
        self.0[class as usize].take(now)
    }

    /// Rows not logged and not yet reported, by class.
    pub fn unreported(&mut self) -> Vec<(Class, u64)> {
        Class::ALL
            .into_iter()
            .filter_map(|class| Some((class, self.0[class as usize].unreported()?)))
            .collect()
    }
}

/// The rows of one class.
#[derive(Debug)]
struct Quota {
    start: Instant,
    second: u64,
    used: u32,
    unlogged: u64,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            start: Instant::now(),
            second: 0,
            used: 0,
            unlogged: 0,
        }
    }
}

/// What to do with one row.
#[derive(Debug, PartialEq, Eq)]
pub struct Take {
    /// Log it.
    pub log: bool,
    /// Rows not logged since the last report; log this count now.
    pub report: Option<u64>,
}

impl Quota {
    fn take(&mut self, now: Instant) -> Take {
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
        Take { log, report }
    }

    fn unreported(&mut self) -> Option<u64> {
        Some(std::mem::take(&mut self.unlogged)).filter(|n| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_is_cut_per_second_and_counted() {
        let mut quotas = Quotas::default();
        let t0 = quotas.0[0].start;
        let logged = (0..1000)
            .filter(|_| quotas.take(Class::Refusal, t0).log)
            .count();
        assert_eq!(logged, PER_SECOND as usize);
        let next = quotas.take(Class::Refusal, t0 + Duration::from_millis(1500));
        assert_eq!(
            next,
            Take {
                log: true,
                report: Some(900)
            }
        );
        assert_eq!(quotas.unreported(), []);
        // The same second: 99 more fit beside the one above.
        for _ in 0..150 {
            quotas.take(Class::Refusal, t0 + Duration::from_millis(1600));
        }
        assert_eq!(quotas.unreported(), [(Class::Refusal, 51)]);
    }

    #[test]
    fn each_class_has_its_own_quota() {
        let mut quotas = Quotas::default();
        let t0 = quotas.0[0].start;
        for _ in 0..PER_SECOND {
            quotas.take(Class::Dns, t0);
        }
        assert!(!quotas.take(Class::Dns, t0).log);
        assert!(quotas.take(Class::Failure, t0).log);
        assert!(quotas.take(Class::Refusal, t0).log);
        assert_eq!(quotas.unreported(), [(Class::Dns, 1)]);
    }
}
