//! The retry budget: how long a message keeps being retried, counted in attempts that reached
//! the downstream service (not deliveries) and in age since it was accepted.
//!
//! Deliveries that never reached the service (a circuit breaker holding calls back, another
//! worker holding the claim) spend nothing, so an outage shorter than `max_age` dead-letters
//! nothing; `maxReceiveCount` stays as the safety net for crashes and poison loops only.

use std::time::Duration;

/// The budget's limits, validated at cold start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    max_attempts: u32,
    max_age: Duration,
}

/// What to do with a message whose attempt just failed, or that must wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again after the wait.
    Retry,
    /// Give up: dead-letter it now.
    GiveUp(GiveUpReason),
}

/// Why a message is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GiveUpReason {
    /// `max_attempts` attempts reached the service and failed.
    BudgetExhausted,
    /// The next try would come after `max_age`.
    MaxAgeExceeded,
}

impl GiveUpReason {
    /// A short code for metrics, logs and the dead letter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BudgetExhausted => "budget_exhausted",
            Self::MaxAgeExceeded => "max_age_exceeded",
        }
    }
}

/// Why budget limits were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("retry budget: at least one attempt and a positive maximum age")]
pub struct BudgetError;

impl RetryBudget {
    /// At most `max_attempts` failed attempts, and no try after `max_age`.
    pub fn new(max_attempts: u32, max_age: Duration) -> Result<Self, BudgetError> {
        if max_attempts == 0 || max_age.is_zero() {
            return Err(BudgetError);
        }
        Ok(Self { max_attempts, max_age })
    }

    /// Most failed attempts.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Oldest a message may be retried at.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The verdict for a message `age` old that has spent `attempts` and would next be tried
    /// after `wait`.
    pub fn verdict(&self, attempts: u32, age: Duration, wait: Duration) -> Verdict {
        if attempts >= self.max_attempts {
            Verdict::GiveUp(GiveUpReason::BudgetExhausted)
        } else if age.saturating_add(wait) > self.max_age {
            Verdict::GiveUp(GiveUpReason::MaxAgeExceeded)
        } else {
            Verdict::Retry
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn budget() -> RetryBudget {
        RetryBudget::new(5, Duration::from_secs(6 * 3600)).unwrap()
    }

    #[test]
    fn attempts_and_age_each_end_the_budget() {
        let b = budget();
        let s = Duration::from_secs;
        assert_eq!(b.verdict(4, s(10), s(60)), Verdict::Retry);
        assert_eq!(b.verdict(5, s(10), s(60)), Verdict::GiveUp(GiveUpReason::BudgetExhausted));
        assert_eq!(b.verdict(0, s(6 * 3600 - 30), s(60)), Verdict::GiveUp(GiveUpReason::MaxAgeExceeded));
        assert_eq!(b.verdict(0, s(6 * 3600 - 60), s(60)), Verdict::Retry);
        assert!(RetryBudget::new(0, s(1)).is_err() && RetryBudget::new(1, Duration::ZERO).is_err());
    }

    proptest! {
        /// Waiting alone (no attempt spent) never gives a message up before its maximum age.
        #[test]
        fn waits_within_the_age_never_give_up(age_s in 0u64..21_600, wait_s in 0u64..21_600) {
            prop_assume!(age_s + wait_s <= 21_600);
            prop_assert_eq!(budget().verdict(0, Duration::from_secs(age_s), Duration::from_secs(wait_s)), Verdict::Retry);
        }

        /// More attempts or more age never turn a give-up back into a retry.
        #[test]
        fn the_verdict_is_monotone(attempts in 0u32..10, age_s in 0u64..30_000, wait_s in 0u64..1_000) {
            let b = budget();
            let s = Duration::from_secs;
            if b.verdict(attempts, s(age_s), s(wait_s)) != Verdict::Retry {
                prop_assert_ne!(b.verdict(attempts + 1, s(age_s), s(wait_s)), Verdict::Retry);
                prop_assert_ne!(b.verdict(attempts, s(age_s + 1), s(wait_s)), Verdict::Retry);
            }
        }
    }
}
