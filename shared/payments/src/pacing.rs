//! Pacing of provider requests, so that a fleet under a spike stays under the provider's rate
//! limit instead of discovering it through 429s.
//!
//! The queue absorbs a spike only if its consumers do not forward it: `N` processor instances
//! (the event source mapping's `MaximumConcurrency`) each calling the provider as fast as their
//! records allow would offer the provider the whole burst. Each instance therefore spaces its
//! provider requests at least `N / limit` seconds apart, so the fleet offers at most `limit`
//! requests per second. This is GCRA (the generic cell rate algorithm) without a burst
//! allowance: each request reserves the next free slot, and a request whose slot would come too
//! late to finish within its invocation is not sent at all (the processor hides its message
//! until the slot frees up, spending none of the payment's retry budget).
//!
//! Written here rather than taken from `governor`: the rule is a dozen lines, it must answer
//! "when would my slot be?" before committing to it (to defer a message whose slot falls past
//! the invocation's deadline), and it must run on the crate's [`Clock`] so that the handler tests
//! can move time by hand.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lambda_support::clock::Clock;

/// A request rate per instance: the fleet's limit divided by the instances that may run at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceRate {
    interval_us: i64,
}

/// Why a rate is refused at cold start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RateError {
    /// Not a finite positive number.
    #[error("PROVIDER_RATE_LIMIT must be a positive number of requests per second, got {0}")]
    NotPositive(f64),
    /// No instances to share it.
    #[error("PROVIDER_RATE_SHARES must be at least 1")]
    NoShares,
    /// More than one request per millisecond per instance: pacing would not be measurable.
    #[error("PROVIDER_RATE_LIMIT / PROVIDER_RATE_SHARES must not exceed 1000 requests per second, got {0}")]
    TooFast(f64),
}

impl InstanceRate {
    /// The share of a fleet-wide `limit` (requests per second) for one of `shares` instances.
    pub fn share_of(limit: f64, shares: u32) -> Result<Self, RateError> {
        if !(limit.is_finite() && limit > 0.0) {
            return Err(RateError::NotPositive(limit));
        }
        if shares == 0 {
            return Err(RateError::NoShares);
        }
        let per_instance = limit / f64::from(shares);
        if per_instance > 1000.0 {
            return Err(RateError::TooFast(per_instance));
        }
        // Rounded up: the instance never exceeds its share.
        Ok(Self { interval_us: (1_000_000.0 / per_instance).ceil() as i64 })
    }

    /// The time between two requests of this instance.
    pub fn interval(&self) -> Duration {
        Duration::from_micros(self.interval_us.unsigned_abs())
    }
}

/// The answer to "may I send a request that must start by `latest`?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Yes, after waiting this long (zero when a slot is free now). The slot is taken.
    Go {
        /// How long to wait first.
        wait: Duration,
    },
    /// Not in time: the next free slot is this far away. Nothing was taken.
    Full {
        /// Until the next free slot.
        free_in: Duration,
    },
}

/// The pure rule: the slot of a request arriving at `now_us` is the later of now and the next free
/// slot; it is taken only if it starts by `latest_us`, and then the next free slot moves one
/// interval past it. Returns the reservation and the new next free slot.
pub fn reserve(next_free_us: i64, now_us: i64, interval_us: i64, latest_us: i64) -> (Reservation, i64) {
    let slot = next_free_us.max(now_us);
    let after = |us: i64| Duration::from_micros(us.saturating_sub(now_us).max(0).unsigned_abs());
    if slot > latest_us {
        return (Reservation::Full { free_in: after(slot) }, next_free_us);
    }
    (Reservation::Go { wait: after(slot) }, slot.saturating_add(interval_us))
}

/// Spaces one instance's provider requests; shared by the records of all its invocations.
pub struct Pacer {
    rate: Option<InstanceRate>,
    next_free_us: Mutex<i64>,
    clock: Arc<dyn Clock>,
}

impl Pacer {
    /// Paces at `rate`; `None` sends every request at once (no limit configured).
    pub fn new(rate: Option<InstanceRate>, clock: Arc<dyn Clock>) -> Self {
        Self { rate, next_free_us: Mutex::new(i64::MIN), clock }
    }

    /// The rate this pacer keeps, if any.
    pub fn rate(&self) -> Option<InstanceRate> {
        self.rate
    }

    /// Reserves the next slot if it comes by `latest_ms` (epoch milliseconds).
    pub fn reserve(&self, latest_ms: i64) -> Reservation {
        let Some(rate) = self.rate else { return Reservation::Go { wait: Duration::ZERO } };
        let now_us = self.clock.now_ms().saturating_mul(1000);
        let mut next_free = self.next_free_us.lock().unwrap_or_else(|p| p.into_inner());
        let (reservation, next) = reserve(*next_free, now_us, rate.interval_us, latest_ms.saturating_mul(1000));
        *next_free = next;
        reservation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_fleet_limit_is_shared_and_rounded_towards_slower() {
        let rate = InstanceRate::share_of(9.0, 3).unwrap();
        assert_eq!(rate.interval(), Duration::from_micros(333_334));
        assert_eq!(InstanceRate::share_of(0.0, 1), Err(RateError::NotPositive(0.0)));
        assert!(matches!(InstanceRate::share_of(f64::NAN, 1), Err(RateError::NotPositive(_))));
        assert_eq!(InstanceRate::share_of(5.0, 0), Err(RateError::NoShares));
        assert_eq!(InstanceRate::share_of(5_000.0, 2), Err(RateError::TooFast(2_500.0)));
    }

    #[test]
    fn a_slot_past_the_latest_start_is_refused_and_taken_from_no_one() {
        let (first, next) = reserve(i64::MIN, 0, 250_000, 1_000_000);
        assert_eq!((first, next), (Reservation::Go { wait: Duration::ZERO }, 250_000));
        let (second, next) = reserve(next, 0, 250_000, 1_000_000);
        assert_eq!((second, next), (Reservation::Go { wait: Duration::from_millis(250) }, 500_000));
        let (late, unchanged) = reserve(next, 0, 250_000, 400_000);
        assert_eq!((late, unchanged), (Reservation::Full { free_in: Duration::from_millis(500) }, 500_000));
    }

    proptest! {
        /// Whatever the arrivals and deadlines, the slots taken are an interval apart (so no
        /// second holds more than `ceil(1 s / interval)` of them), none starts past its request's
        /// latest start, and none starts before its request arrived.
        #[test]
        fn slots_are_an_interval_apart_and_never_late(
            interval_us in 1_000i64..2_000_000,
            requests in proptest::collection::vec((0i64..5_000_000, 0i64..10_000_000), 1..200),
        ) {
            let mut arrivals: Vec<(i64, i64)> = requests;
            arrivals.sort_by_key(|(at, _)| *at);
            let mut next_free = i64::MIN;
            let mut slots = Vec::new();
            for (now, slack) in arrivals {
                let latest = now + slack;
                let (reservation, next) = reserve(next_free, now, interval_us, latest);
                if let Reservation::Go { wait } = reservation {
                    let slot = now + i64::try_from(wait.as_micros()).unwrap();
                    prop_assert!(slot <= latest && slot >= now);
                    slots.push(slot);
                } else {
                    prop_assert_eq!(next, next_free, "a refusal takes nothing");
                }
                next_free = next;
            }
            for pair in slots.windows(2) {
                prop_assert!(pair[1] - pair[0] >= interval_us, "{:?}", pair);
            }
        }
    }
}
