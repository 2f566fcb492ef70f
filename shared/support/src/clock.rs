//! Wall-clock time as epoch milliseconds, behind a trait so that lease and TTL expiry can be
//! tested (and model-checked) without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now". Records store epoch milliseconds, so that is what a clock gives.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The real clock: what Lambda functions use.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        epoch_ms(SystemTime::now())
    }
}

/// A clock that moves only when told to: lets tests reach "the lease is over" or "the record is
/// past its TTL" deterministically, against LocalStack as well as in memory.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock stopped at `now_ms`.
    pub fn at(now_ms: i64) -> Self {
        Self(Arc::new(AtomicI64::new(now_ms)))
    }

    /// Moves the clock forward (or back, with a negative value).
    pub fn advance_ms(&self, delta_ms: i64) {
        self.0.fetch_add(delta_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Epoch milliseconds of a `SystemTime` (0 for times before the epoch, which never occur here).
pub fn epoch_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// RFC 3339 text (UTC, millisecond precision) for an epoch-millisecond timestamp, as the API and
/// the failure records show it.
pub fn rfc3339_ms(epoch_ms: i64) -> String {
    let time = UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(epoch_ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

/// Epoch milliseconds before which no real invocation deadline can lie (2001-09-09).
const EARLIEST_EPOCH_DEADLINE_MS: u64 = 1_000_000_000_000;

/// The invocation's deadline as epoch milliseconds. Lambda sends an epoch deadline; the local
/// runtime emulator (`cargo lambda watch` 1.9) sends the remaining time instead (600000). A value
/// too small to be an epoch time is therefore read as remaining milliseconds, so that local runs
/// get a real deadline instead of one in 1970.
pub fn invocation_deadline_ms(context_deadline: u64, now_ms: i64) -> i64 {
    if context_deadline < EARLIEST_EPOCH_DEADLINE_MS {
        now_ms.saturating_add(i64::try_from(context_deadline).unwrap_or(i64::MAX))
    } else {
        i64::try_from(context_deadline).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::at(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance_ms(250);
        assert_eq!(clock.now_ms(), 1_250);
    }

    #[test]
    fn deadlines_are_epoch_times_or_remaining_time_from_an_emulator() {
        assert_eq!(invocation_deadline_ms(1_800_000_000_000, 5), 1_800_000_000_000);
        assert_eq!(invocation_deadline_ms(600_000, 1_800_000_000_000), 1_800_000_600_000);
    }

    #[test]
    fn rfc3339_is_utc_with_millis() {
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
