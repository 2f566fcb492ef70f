//! The provider's capacity, as real providers enforce it: a rate limit (requests admitted per
//! sliding second) and a concurrency limit (requests served at once), each answered beyond with
//! 429 and `Retry-After`. The gate also measures what clients offered, so that a run can tell a
//! client that respects the limit from one the limit merely refused.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The limits; 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Capacity {
    /// Requests admitted within any one second (charges and lookups alike).
    pub rate_per_s: u32,
    /// Requests being served at once.
    pub max_concurrent: u32,
}

/// What the gate saw, in `GET /ledger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CapacityStats {
    /// Most requests that arrived within one sliding second, refused ones included: the rate the
    /// clients offered, which the limit cannot bound.
    pub peak_offered_per_s: u64,
    /// Most requests admitted within one sliding second.
    pub peak_admitted_per_s: u64,
    /// Most requests served at once.
    pub peak_concurrent: u64,
    /// Requests refused by the rate limit.
    pub throttled_by_rate: u64,
    /// Requests refused by the concurrency limit.
    pub throttled_by_concurrency: u64,
}

/// Why a request was refused, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Whole seconds, at least 1 (the `Retry-After` header has no finer unit).
    pub retry_after_s: u64,
}

const WINDOW: Duration = Duration::from_secs(1);

/// The sliding windows and the count of requests in progress.
#[derive(Debug, Default)]
pub struct Gate {
    offered: VecDeque<Instant>,
    admitted: VecDeque<Instant>,
    in_flight: u64,
    /// The figures so far.
    pub stats: CapacityStats,
}

impl Gate {
    /// A request arrives at `now`: admitted (the caller must [`Gate::leave`] when done) or
    /// throttled.
    pub fn arrive(&mut self, now: Instant, capacity: Capacity) -> Result<(), Throttled> {
        slide(&mut self.offered, now);
        slide(&mut self.admitted, now);
        self.offered.push_back(now);
        self.stats.peak_offered_per_s = self.stats.peak_offered_per_s.max(self.offered.len() as u64);
        if capacity.rate_per_s > 0 && self.admitted.len() >= capacity.rate_per_s as usize {
            self.stats.throttled_by_rate += 1;
            // Room comes back when the oldest admitted request leaves the window.
            let free_at = self.admitted.front().map_or(now, |oldest| *oldest + WINDOW);
            let wait = free_at.saturating_duration_since(now);
            return Err(Throttled { retry_after_s: wait.as_millis().div_ceil(1000).max(1) as u64 });
        }
        if capacity.max_concurrent > 0 && self.in_flight >= u64::from(capacity.max_concurrent) {
            self.stats.throttled_by_concurrency += 1;
            return Err(Throttled { retry_after_s: 1 });
        }
        self.admitted.push_back(now);
        self.stats.peak_admitted_per_s = self.stats.peak_admitted_per_s.max(self.admitted.len() as u64);
        self.in_flight += 1;
        self.stats.peak_concurrent = self.stats.peak_concurrent.max(self.in_flight);
        Ok(())
    }

    /// An admitted request is done.
    pub fn leave(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

/// Drops the arrivals that are a second or more old.
fn slide(window: &mut VecDeque<Instant>, now: Instant) {
    while window.front().is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW) {
        window.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(base: Instant, at: u64) -> Instant {
        base + Duration::from_millis(at)
    }

    #[test]
    fn the_rate_limit_admits_at_most_its_rate_in_any_second_and_says_when_to_return() {
        let (base, mut gate) = (Instant::now(), Gate::default());
        let capacity = Capacity { rate_per_s: 3, max_concurrent: 0 };
        for at in [0, 100, 200] {
            assert_eq!(gate.arrive(ms(base, at), capacity), Ok(()));
            gate.leave();
        }
        assert_eq!(gate.arrive(ms(base, 300), capacity), Err(Throttled { retry_after_s: 1 }));
        assert_eq!(gate.arrive(ms(base, 999), capacity), Err(Throttled { retry_after_s: 1 }));
        assert_eq!(gate.arrive(ms(base, 1_000), capacity), Ok(()), "the first admission left the window");
        assert_eq!(gate.stats.peak_admitted_per_s, 3);
        assert_eq!(gate.stats.peak_offered_per_s, 5, "offered counts the refused ones");
        assert_eq!(gate.stats.throttled_by_rate, 2);
    }

    #[test]
    fn the_concurrency_limit_counts_requests_until_they_leave() {
        let (base, mut gate) = (Instant::now(), Gate::default());
        let capacity = Capacity { rate_per_s: 0, max_concurrent: 2 };
        assert!(gate.arrive(base, capacity).is_ok());
        assert!(gate.arrive(base, capacity).is_ok());
        assert_eq!(gate.arrive(base, capacity), Err(Throttled { retry_after_s: 1 }));
        gate.leave();
        assert!(gate.arrive(base, capacity).is_ok());
        assert_eq!((gate.stats.peak_concurrent, gate.stats.throttled_by_concurrency), (2, 1));
    }

    #[test]
    fn unlimited_admits_everything_and_still_measures() {
        let (base, mut gate) = (Instant::now(), Gate::default());
        for at in 0..50 {
            assert!(gate.arrive(ms(base, at * 10), Capacity::default()).is_ok());
        }
        assert_eq!(gate.stats.peak_offered_per_s, 50);
        assert_eq!(gate.stats.peak_concurrent, 50);
    }
}
