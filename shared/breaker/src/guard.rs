//! The face callers use: admission before a provider call and a report after it, over a shared
//! store, with the state cached per instance for a few seconds.
//!
//! Cost in DynamoDB requests: a read per instance per `cache_for` while anything is cached, a
//! write per unhealthy call while closed (that is how the fleet counts), one write to reset the
//! count after a failure, and a write per probe lease and per probe outcome. A healthy call into
//! a clean, closed breaker costs nothing. A store that fails lets calls through: the breaker
//! must never become the outage.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::protocol::{
    Admission, BreakerPolicy, BreakerState, CallHealth, Circuit, Phase, admit, forced, lease_probe, record_call,
    return_probe,
};
use super::store::{BreakerStore, BreakerStoreError, Written};
use lambda_support::clock::Clock;

/// A write loses a version race at most this many times before giving up.
const MAX_WRITE_ROUNDS: usize = 5;

/// How a breaker is named and tuned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Which provider (one shared item per name).
    pub name: String,
    /// The rules' parameters.
    pub policy: BreakerPolicy,
    /// How long an instance trusts the state it read.
    pub cache_for: Duration,
    /// How long a caller that lost the probe race waits before asking again.
    pub half_open_wait: Duration,
}

impl BreakerConfig {
    /// The breaker of provider `name` with the default policy, a state trusted for five seconds,
    /// and two seconds' wait for a caller that lost the probe race.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            policy: BreakerPolicy::default(),
            cache_for: Duration::from_secs(5),
            half_open_wait: Duration::from_secs(2),
        }
    }
}

/// Leave to call the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permit {
    /// An ordinary call (closed breaker, or its store unreachable).
    Call,
    /// The fleet's one probe of a half-open breaker, under this lease token.
    Probe(String),
}

/// What admission answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Call the provider, then report with [`CircuitBreaker::record`].
    Go(Permit),
    /// Do not call before `until_ms` (epoch ms).
    Wait {
        /// When to ask again.
        until_ms: i64,
        /// Open, or half-open with another instance probing.
        phase: Phase,
        /// Since when the provider has been considered down (epoch ms).
        opened_at_ms: i64,
    },
}

/// A change of phase this instance wrote, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The phase before the write.
    pub from: Phase,
    /// The phase the write left.
    pub to: Phase,
}

/// A circuit breaker shared by every instance through `store`.
pub struct CircuitBreaker<B> {
    store: B,
    config: BreakerConfig,
    clock: Arc<dyn Clock>,
    cache: Mutex<Option<(BreakerState, i64)>>,
    /// One read at a time when the cache runs out: the records of a batch that all find it
    /// stale wait for that read instead of each making their own.
    refresh: tokio::sync::Mutex<()>,
}

impl<B: BreakerStore> CircuitBreaker<B> {
    /// A breaker over `store`; validate the policy first ([`BreakerPolicy::validate`]).
    pub fn new(store: B, config: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        Self { store, config, clock, cache: Mutex::new(None), refresh: tokio::sync::Mutex::new(()) }
    }

    /// The name and tuning this breaker was built with.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The store underneath, for operators' reads and forced transitions.
    pub fn store(&self) -> &B {
        &self.store
    }

    /// May this caller call the provider now?
    pub async fn admit(&self) -> Admitted {
        let now_ms = self.clock.now_ms();
        let state = match self.current(now_ms).await {
            Ok(state) => state,
            Err(e) => return fail_open(&e),
        };
        match admit(&state, now_ms, self.config.half_open_wait) {
            Admission::Call => Admitted::Go(Permit::Call),
            Admission::Wait { until_ms } => wait(&state, until_ms, now_ms),
            Admission::TryProbe => {
                let token = uuid::Uuid::new_v4().to_string();
                let policy = self.config.policy;
                match self.update(state, |s| lease_probe(s, &token, now_ms, &policy)).await {
                    Ok(Some(_)) => Admitted::Go(Permit::Probe(token)),
                    Ok(None) => {
                        let current = self.cached().unwrap_or_default();
                        match admit(&current, now_ms, self.config.half_open_wait) {
                            Admission::Wait { until_ms } => wait(&current, until_ms, now_ms),
                            // Closed meanwhile; or free again, which the next delivery will try.
                            Admission::Call => Admitted::Go(Permit::Call),
                            Admission::TryProbe => wait(&current, now_ms + ms(self.config.half_open_wait), now_ms),
                        }
                    }
                    Err(e) => fail_open(&e),
                }
            }
        }
    }

    /// Reports how a call went (`None`: the answer says nothing of the provider's health, such
    /// as a 409 for one key, or the call was not made after all). Returns the phase change this
    /// report wrote, if any.
    pub async fn record(&self, permit: &Permit, health: Option<CallHealth>) -> Option<Transition> {
        let now_ms = self.clock.now_ms();
        let policy = self.config.policy;
        let probe = match permit {
            Permit::Probe(token) => Some(token.as_str()),
            Permit::Call => None,
        };
        let result = match self.current(now_ms).await {
            Ok(state) => {
                self.update(state, |s| match health {
                    Some(h) => record_call(s, h, probe, now_ms, &policy),
                    None => probe.and_then(|token| return_probe(s, token)),
                })
                .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(Some((before, after))) => {
                let (from, to) = (before.phase(now_ms), after.phase(now_ms));
                (from != to).then_some(Transition { from, to })
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "could not record the provider call in the circuit breaker");
                None
            }
        }
    }

    /// Forces the breaker open for `for_` or closed (an operator's override), bypassing the cache.
    pub async fn force(&self, circuit: Circuit, for_: Duration) -> Result<BreakerState, BreakerStoreError> {
        let now_ms = self.clock.now_ms();
        let current = self.store.read(&self.config.name).await?;
        let until = now_ms.saturating_add(ms(for_));
        match self.update(current, |s| Some(forced(s, circuit, until, now_ms))).await? {
            Some((_, after)) => Ok(after),
            None => Err(BreakerStoreError("forcing the breaker wrote nothing".into())),
        }
    }

    /// The state as this instance last saw it (for metrics), if it has read it.
    pub fn cached(&self) -> Option<BreakerState> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(state, _)| state.clone())
    }

    async fn current(&self, now_ms: i64) -> Result<BreakerState, BreakerStoreError> {
        if let Some(state) = self.fresh(now_ms) {
            return Ok(state);
        }
        let _one_reader = self.refresh.lock().await;
        if let Some(state) = self.fresh(now_ms) {
            return Ok(state);
        }
        let state = self.store.read(&self.config.name).await?;
        self.remember(&state);
        Ok(state)
    }

    /// The cached state, if read less than `cache_for` ago.
    fn fresh(&self, now_ms: i64) -> Option<BreakerState> {
        let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).clone();
        cached.filter(|(_, read_at)| now_ms.saturating_sub(*read_at) < ms(self.config.cache_for)).map(|(s, _)| s)
    }

    fn remember(&self, state: &BreakerState) {
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((state.clone(), self.clock.now_ms()));
    }

    /// Applies `change` to `state`, writing the result over the version it came from; on a lost
    /// race, applies it again to the state found. `None` from `change` means nothing to write.
    async fn update(
        &self,
        mut state: BreakerState,
        change: impl Fn(&BreakerState) -> Option<BreakerState>,
    ) -> Result<Option<(BreakerState, BreakerState)>, BreakerStoreError> {
        for _ in 0..MAX_WRITE_ROUNDS {
            let Some(next) = change(&state) else { return Ok(None) };
            match self.store.write(&self.config.name, &next).await? {
                Written::Stored => {
                    self.remember(&next);
                    return Ok(Some((state, next)));
                }
                Written::Conflict(found) => {
                    self.remember(&found);
                    state = found;
                }
            }
        }
        Err(BreakerStoreError(format!("breaker {} kept changing under this write", self.config.name)))
    }
}

fn wait(state: &BreakerState, until_ms: i64, now_ms: i64) -> Admitted {
    Admitted::Wait { until_ms, phase: state.phase(now_ms), opened_at_ms: state.opened_at_ms }
}

fn fail_open(error: &BreakerStoreError) -> Admitted {
    tracing::warn!(error = %error, "circuit breaker state unavailable; calling the provider anyway");
    Admitted::Go(Permit::Call)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::InMemoryBreakerStore;
    use lambda_support::clock::ManualClock;

    fn breaker(store: &InMemoryBreakerStore, clock: &ManualClock) -> CircuitBreaker<InMemoryBreakerStore> {
        CircuitBreaker::new(store.clone(), BreakerConfig::named("provider"), Arc::new(clock.clone()))
    }

    #[tokio::test]
    async fn instances_share_the_state_and_learn_of_an_open_breaker_from_their_next_failure() {
        let (store, clock) = (InMemoryBreakerStore::default(), ManualClock::at(1_000_000));
        let (a, b) = (breaker(&store, &clock), breaker(&store, &clock));
        assert_eq!(b.admit().await, Admitted::Go(Permit::Call), "b caches a closed breaker");
        let mut opened = None;
        for _ in 0..5 {
            assert_eq!(a.admit().await, Admitted::Go(Permit::Call));
            opened = opened.or(a.record(&Permit::Call, Some(CallHealth::Unhealthy)).await);
        }
        assert_eq!(opened, Some(Transition { from: Phase::Closed, to: Phase::Open }));
        assert!(matches!(a.admit().await, Admitted::Wait { phase: Phase::Open, .. }));
        // b still trusts its cache, but its own failure's write meets the open breaker.
        assert_eq!(b.record(&Permit::Call, Some(CallHealth::Unhealthy)).await, None);
        assert!(matches!(b.admit().await, Admitted::Wait { phase: Phase::Open, .. }));
    }

    #[tokio::test]
    async fn one_instance_probes_and_three_successes_close() {
        let (store, clock) = (InMemoryBreakerStore::default(), ManualClock::at(0));
        let (a, b) = (breaker(&store, &clock), breaker(&store, &clock));
        for _ in 0..5 {
            a.record(&Permit::Call, Some(CallHealth::Unhealthy)).await;
        }
        clock.advance_ms(30_000);
        let Admitted::Go(probe) = a.admit().await else { panic!("a probes") };
        assert!(matches!(probe, Permit::Probe(_)));
        assert!(matches!(b.admit().await, Admitted::Wait { phase: Phase::HalfOpen, .. }), "b may not probe too");
        assert_eq!(a.record(&probe, Some(CallHealth::Healthy)).await, None);
        for _ in 0..2 {
            clock.advance_ms(6_000);
            let Admitted::Go(p @ Permit::Probe(_)) = b.admit().await else { panic!("the next probe") };
            b.record(&p, Some(CallHealth::Healthy)).await;
        }
        assert_eq!(store.read("provider").await.unwrap().circuit, Circuit::Closed);
        clock.advance_ms(6_000);
        assert_eq!(a.admit().await, Admitted::Go(Permit::Call));
    }

    /// Counts reads, to show that a batch finding the cache stale makes one.
    #[derive(Clone, Default)]
    struct CountingStore(InMemoryBreakerStore, Arc<std::sync::atomic::AtomicUsize>);

    impl BreakerStore for CountingStore {
        async fn read(&self, name: &str) -> Result<BreakerState, BreakerStoreError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::task::yield_now().await;
            self.0.read(name).await
        }

        async fn write(&self, name: &str, next: &BreakerState) -> Result<Written, BreakerStoreError> {
            self.0.write(name, next).await
        }
    }

    #[tokio::test]
    async fn concurrent_admissions_share_one_read_of_a_stale_cache() {
        let store = CountingStore::default();
        let config = BreakerConfig {
            name: "provider".into(),
            policy: BreakerPolicy::default(),
            cache_for: Duration::from_secs(5),
            half_open_wait: Duration::from_secs(2),
        };
        let clock = ManualClock::at(0);
        let breaker = CircuitBreaker::new(store.clone(), config, Arc::new(clock.clone()));
        for round in 1..=3 {
            let admitted = futures::future::join_all((0..10).map(|_| breaker.admit())).await;
            assert!(admitted.iter().all(|a| *a == Admitted::Go(Permit::Call)));
            assert_eq!(store.1.load(std::sync::atomic::Ordering::SeqCst), round, "one read per expiry");
            clock.advance_ms(5_000);
        }
    }

    #[tokio::test]
    async fn a_probe_given_back_frees_the_lease_at_once() {
        let (store, clock) = (InMemoryBreakerStore::default(), ManualClock::at(0));
        let a = breaker(&store, &clock);
        a.force(Circuit::Open, Duration::from_secs(1)).await.unwrap();
        clock.advance_ms(1_000);
        let Admitted::Go(probe) = a.admit().await else { panic!("probe") };
        a.record(&probe, None).await;
        assert!(store.read("provider").await.unwrap().probe_owner.is_none());
        assert!(matches!(a.admit().await, Admitted::Go(Permit::Probe(_))));
    }
}
