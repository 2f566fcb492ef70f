//! How long a message stays hidden before its next delivery, for each reason it may wait: a
//! jittered backoff, the breaker's open time, another worker's lease, a free slot of the
//! provider's rate. Whole seconds (SQS's unit), rounded up, at least one.

use std::sync::Arc;
use std::time::Duration;

use fleet_breaker::{BreakerConfig, Phase};
use lambda_sqs_batch::backoff::SQS_MAX_VISIBILITY;
use lambda_sqs_batch::{Backoff, Jitter};
use lambda_support::clock::Clock;

pub(crate) struct Waits {
    backoff: Backoff,
    jitter: Jitter,
    breaker: BreakerConfig,
    clock: Arc<dyn Clock>,
}

impl Waits {
    pub(crate) fn new(backoff: Backoff, breaker: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        Self { backoff, jitter: Jitter::from_os(), breaker, clock }
    }

    pub(crate) fn with_jitter(self, jitter: Jitter) -> Self {
        Self { jitter, ..self }
    }

    /// The jittered backoff for try `attempt`, at least `floor` (a `Retry-After`, a schema
    /// version's wait), at most the backoff's cap.
    pub(crate) fn backoff(&self, attempt: u32, floor: Option<Duration>) -> Duration {
        let drawn = self.jitter.delay(&self.backoff, attempt);
        floor.map_or(drawn, |f| drawn.max(f)).min(self.backoff.cap())
    }

    /// Until `until_ms`, plus a jitter that spreads the crowd coming back for the probe.
    /// Never longer than the breaker's longest wait: an operator's forced open may be longer,
    /// and a forced close must not leave messages hidden until then.
    pub(crate) fn breaker(&self, until_ms: i64, phase: Phase) -> Duration {
        let spread = match phase {
            Phase::HalfOpen => self.breaker.half_open_wait,
            Phase::Open | Phase::Closed => self.breaker.policy.open_base,
        };
        let wait = self.until(until_ms).min(self.breaker.policy.open_max) + self.jitter.spread(spread);
        round_up_secs(wait).max(Duration::from_secs(1)).min(SQS_MAX_VISIBILITY)
    }

    /// Until another worker's lease ends at `lease_until_ms`, not sooner; at most the backoff's cap.
    pub(crate) fn lease(&self, lease_until_ms: i64) -> Duration {
        round_up_secs(self.until(lease_until_ms).max(Duration::from_secs(1)).min(self.backoff.cap()))
    }

    /// Until a slot of the provider's rate frees up in `free_in`.
    pub(crate) fn rate(&self, free_in: Duration) -> Duration {
        round_up_secs(free_in).max(Duration::from_secs(1)).min(self.backoff.cap())
    }

    fn until(&self, at_ms: i64) -> Duration {
        Duration::from_millis(u64::try_from(at_ms.saturating_sub(self.clock.now_ms())).unwrap_or(0))
    }
}

fn round_up_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_millis().div_ceil(1000) as u64)
}
