//! Exponential backoff with full jitter, driven by a message's ApproximateReceiveCount: the n-th
//! failed delivery waits a random time in [0, min(cap, base · 2^(n−1))].

use std::time::Duration;

use rand::RngExt;

/// The longest visibility timeout SQS accepts (12 hours).
pub const SQS_MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

/// Backoff parameters, validated at cold start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

/// Why backoff parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackoffError {
    /// The base must be positive.
    #[error("backoff base must be positive")]
    ZeroBase,
    /// The cap must be at least the base and at most 12 hours.
    #[error("backoff cap must be between the base ({base:?}) and 12 hours, got {cap:?}")]
    Cap {
        /// The base.
        base: Duration,
        /// The cap given.
        cap: Duration,
    },
}

impl Backoff {
    /// `base` for the first retry, doubling per delivery, never above `cap` (≤ 12 h).
    pub fn new(base: Duration, cap: Duration) -> Result<Self, BackoffError> {
        if base.is_zero() {
            return Err(BackoffError::ZeroBase);
        }
        if cap < base || cap > SQS_MAX_VISIBILITY {
            return Err(BackoffError::Cap { base, cap });
        }
        Ok(Self { base, cap })
    }

    /// The longest wait: the queue's own visibility timeout must not be shorter, or a message
    /// can come back before its wait is over.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The upper bound of the wait after the `receive_count`-th delivery failed (counts start at
    /// 1; 0 is treated as 1). Never overflows: the doubling saturates at the cap.
    pub fn ceiling(&self, receive_count: u32) -> Duration {
        let doublings = receive_count.saturating_sub(1).min(63);
        let factor = 1u64.checked_shl(doublings).unwrap_or(u64::MAX);
        let base_ms = u64::try_from(self.base.as_millis()).unwrap_or(u64::MAX);
        let ceiling_ms = base_ms.saturating_mul(factor);
        Duration::from_millis(ceiling_ms).min(self.cap)
    }

    /// A wait drawn uniformly from [0, ceiling] ("full jitter"), in whole seconds as SQS takes
    /// them, rounded up so that a non-zero draw never becomes an immediate redelivery.
    pub fn delay<R: rand::Rng + ?Sized>(&self, receive_count: u32, rng: &mut R) -> Duration {
        let ceiling_ms = u64::try_from(self.ceiling(receive_count).as_millis()).unwrap_or(u64::MAX);
        let drawn_ms = rng.random_range(0..=ceiling_ms);
        let cap_s = self.cap.as_secs().max(1);
        Duration::from_secs(drawn_ms.div_ceil(1000).min(cap_s))
    }
}

/// The random source of the jitter: from the OS by default, seeded where a test must know the
/// waits in advance.
#[derive(Debug)]
pub struct Jitter(std::sync::Mutex<rand::rngs::StdRng>);

impl Jitter {
    /// Seeded from the operating system: what a deployed function uses.
    pub fn from_os() -> Self {
        use rand::SeedableRng;
        Self(std::sync::Mutex::new(rand::rngs::StdRng::from_rng(&mut rand::rng())))
    }

    /// A reproducible sequence, for tests that must know the waits in advance.
    pub fn seeded(seed: u64) -> Self {
        use rand::SeedableRng;
        Self(std::sync::Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)))
    }

    /// The wait after the `receive_count`-th failed delivery.
    pub fn delay(&self, backoff: &Backoff, receive_count: u32) -> Duration {
        backoff.delay(receive_count, &mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A wait drawn uniformly from [0, `max`], in milliseconds: spreads a crowd of messages that
    /// would otherwise all come back at the same moment (a circuit breaker's probe time).
    pub fn spread(&self, max: Duration) -> Duration {
        use rand::RngExt;
        let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.0.lock().unwrap_or_else(|p| p.into_inner()).random_range(0..=max_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn backoff(base_ms: u64, cap_s: u64) -> Backoff {
        Backoff::new(Duration::from_millis(base_ms), Duration::from_secs(cap_s)).unwrap()
    }

    #[test]
    fn doubles_from_the_base_up_to_the_cap() {
        let b = backoff(2_000, 60);
        let ceilings: Vec<u64> = (1..=7).map(|n| b.ceiling(n).as_secs()).collect();
        assert_eq!(ceilings, [2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.ceiling(0), b.ceiling(1));
    }

    #[test]
    fn parameters_are_validated() {
        assert_eq!(Backoff::new(Duration::ZERO, Duration::from_secs(1)), Err(BackoffError::ZeroBase));
        assert!(Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).is_err());
        assert!(Backoff::new(Duration::from_secs(1), SQS_MAX_VISIBILITY + Duration::from_secs(1)).is_err());
        assert!(Backoff::new(Duration::from_secs(1), SQS_MAX_VISIBILITY).is_ok());
    }

    #[test]
    fn jitter_spreads_over_the_whole_window() {
        let b = backoff(1_000, 3600);
        let mut rng = StdRng::seed_from_u64(3);
        let draws: Vec<u64> = (0..1000).map(|_| b.delay(6, &mut rng).as_secs()).collect();
        // Ceiling 32 s: the draws must cover low and high parts of [0, 32].
        assert!(draws.iter().any(|&d| d <= 4) && draws.iter().any(|&d| d >= 28), "{draws:?}");
    }

    proptest! {
        #[test]
        fn delays_stay_within_the_ceiling_and_the_cap(
            base_ms in 1u64..100_000, cap_s in 100u64..43_200, count in 0u32..100_000, seed: u64,
        ) {
            let b = backoff(base_ms, cap_s);
            let mut rng = StdRng::seed_from_u64(seed);
            let delay = b.delay(count, &mut rng);
            prop_assert!(b.ceiling(count) <= b.cap());
            prop_assert!(delay <= b.cap());
            prop_assert!(delay.as_millis() < b.ceiling(count).as_millis() + 1000, "rounding adds under a second");
            prop_assert!(b.cap() <= SQS_MAX_VISIBILITY);
        }

        #[test]
        fn the_ceiling_never_decreases(base_ms in 1u64..100_000, cap_s in 100u64..43_200, count in 0u32..10_000) {
            let b = backoff(base_ms, cap_s);
            prop_assert!(b.ceiling(count) <= b.ceiling(count + 1));
        }
    }
}
