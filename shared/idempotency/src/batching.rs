//! One request for the claims, and one for the settlements, of handlers that run concurrently —
//! an SQS batch's messages — without changing a line of the handlers: a store that gathers what
//! its callers ask at about the same time and sends it through [`IdempotencyStore::claim_many`]
//! and [`IdempotencyStore::settle_many`].
//!
//! - **Claims** go together when a scheduler tick brings no new claim: the first caller waits
//!   for its peers to reach their claim (they run up to it without waiting on anything), then
//!   sends them all.
//! - **Settlements** wait for each other: a settlement is held until every lease claimed through
//!   this store has its settlement waiting too, so that a batch settles in one request. It is
//!   never held past `max_hold` after the first one waited, nor closer than `deadline_margin` to
//!   the earliest waiting lease's end (the invocation's deadline): a lease must not lapse while
//!   its result waits. A lease that will never be settled (its handler panicked) therefore costs
//!   the others at most `max_hold`.
//!
//! Each claim and settlement is still decided alone by the store's rule: what changes is only
//! which requests share a round trip. Switched off, every call goes straight through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lambda_support::clock::{Clock, SystemClock};
use tokio::sync::{Notify, oneshot};

use crate::key::{Operation, RecordKey};
use crate::protocol::{ClaimRequest, IdempotencyRecord, SettleRequest};
use crate::store::{ClaimOutcome, IdempotencyStore, Settlement, StoreError};

/// How long settlements may wait for each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchingConfig {
    /// Send claims and settlements together (`false`: every call goes straight through).
    pub enabled: bool,
    /// The longest a settlement waits for the others, from the first that waited: the longest
    /// one handler may take (a provider call's timeout and its margin).
    pub max_hold: Duration,
    /// No settlement waits closer than this to the end of the earliest waiting lease.
    pub deadline_margin: Duration,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self { enabled: true, max_hold: Duration::from_secs(10), deadline_margin: Duration::from_secs(2) }
    }
}

/// Calls waiting for one request, with where each answer goes.
type Waiting<R, A> = Vec<(R, oneshot::Sender<A>)>;

/// A store whose concurrent claims and settlements share requests.
pub struct Batching<S> {
    inner: S,
    config: BatchingConfig,
    clock: Arc<dyn Clock>,
    claims: Mutex<Waiting<ClaimRequest, Result<ClaimOutcome, StoreError>>>,
    settlements: Mutex<Settlements>,
    /// Wakes the settlements' sender when one more settlement waits.
    arrived: Notify,
}

/// Settlements waiting, and the leases claimed through this store not settled yet.
#[derive(Default)]
struct Settlements {
    waiting: Waiting<SettleRequest, Result<Settlement, StoreError>>,
    /// When each waiting settlement's lease ends (epoch ms).
    waiting_until_ms: Vec<i64>,
    /// Owner token → the end of its lease (epoch ms).
    unsettled: HashMap<String, i64>,
    /// When the first of `waiting` started waiting (epoch ms).
    first_waited_ms: Option<i64>,
}

impl<S: IdempotencyStore> Batching<S> {
    /// Over `inner`, on the system clock.
    pub fn new(inner: S, config: BatchingConfig) -> Self {
        Self::with_clock(inner, config, Arc::new(SystemClock))
    }

    /// The same, on another clock (tests).
    pub fn with_clock(inner: S, config: BatchingConfig, clock: Arc<dyn Clock>) -> Self {
        Self { inner, config, clock, claims: Mutex::default(), settlements: Mutex::default(), arrived: Notify::new() }
    }

    /// The store underneath.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        // Every change under these locks is a push or a take: a panic cannot leave half of one.
        mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends every claim waiting, once a scheduler tick brings no new one.
    async fn send_claims(&self) {
        let unless_sent = UnlessSent::new(|| drop(std::mem::take(&mut *Self::lock(&self.claims))));
        let mut seen = 1;
        loop {
            tokio::task::yield_now().await;
            let now = Self::lock(&self.claims).len();
            if now == seen {
                break;
            }
            seen = now;
        }
        let waiting = std::mem::take(&mut *Self::lock(&self.claims));
        unless_sent.disarm();
        let (requests, answers): (Vec<_>, Vec<_>) = waiting.into_iter().unzip();
        let outcomes = self.inner.claim_many(&requests).await;
        {
            let mut settlements = Self::lock(&self.settlements);
            for outcome in &outcomes {
                if let Ok(ClaimOutcome::Claimed(lease)) = outcome {
                    settlements.unsettled.insert(lease.owner.as_str().to_owned(), lease.lease_until_ms);
                }
            }
        }
        for (answer, outcome) in answers.into_iter().zip(outcomes) {
            let _ = answer.send(outcome);
        }
    }

    /// Sends every settlement waiting, once every lease has one waiting, or at the latest when
    /// holding them longer could cost a lease or `max_hold` has passed.
    async fn send_settlements(&self) {
        let unless_sent = UnlessSent::new(|| drop(self.take_settlements()));
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let Some(wait) = self.hold_for() else { break };
            if tokio::time::timeout(wait, arrived).await.is_err() {
                break;
            }
        }
        let (requests, answers): (Vec<_>, Vec<_>) = self.take_settlements().into_iter().unzip();
        unless_sent.disarm();
        let outcomes = self.inner.settle_many(&requests).await;
        for (answer, outcome) in answers.into_iter().zip(outcomes) {
            let _ = answer.send(outcome);
        }
    }

    fn take_settlements(&self) -> Waiting<SettleRequest, Result<Settlement, StoreError>> {
        let mut settlements = Self::lock(&self.settlements);
        settlements.waiting_until_ms.clear();
        settlements.first_waited_ms = None;
        std::mem::take(&mut settlements.waiting)
    }

    /// How much longer the waiting settlements may wait for the others; `None`: send now.
    fn hold_for(&self) -> Option<Duration> {
        let now = self.clock.now_ms();
        let mut settlements = Self::lock(&self.settlements);
        settlements.unsettled.retain(|_, until| *until > now);
        if settlements.unsettled.is_empty() {
            return None;
        }
        let margin = as_ms(self.config.deadline_margin);
        let by_lease = settlements.waiting_until_ms.iter().min().map_or(i64::MAX, |until| until - margin);
        let by_hold = settlements.first_waited_ms.map_or(i64::MAX, |first| first + as_ms(self.config.max_hold));
        let left = by_lease.min(by_hold) - now;
        (left > 0).then(|| Duration::from_millis(left.unsigned_abs()))
    }
}

/// The first caller sends for all; should its future be dropped before it sends (a timeout
/// around it, a cancelled task), the calls waiting on it are failed with [`abandoned`] — a
/// transient error their callers retry — rather than left waiting for a sender that is gone.
struct UnlessSent<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> UnlessSent<F> {
    fn new(fail_the_waiting: F) -> Self {
        Self(Some(fail_the_waiting))
    }

    /// Sent: nothing is left to fail.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl<F: FnOnce()> Drop for UnlessSent<F> {
    fn drop(&mut self) {
        if let Some(fail_the_waiting) = self.0.take() {
            fail_the_waiting();
        }
    }
}

fn as_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// An answer that never came: the call that was sending it failed before it could answer.
fn abandoned() -> StoreError {
    StoreError::Transient("the batched request was abandoned".into())
}

impl<S: IdempotencyStore> IdempotencyStore for Batching<S> {
    async fn claim(&self, request: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        if !self.config.enabled {
            return self.inner.claim(request).await;
        }
        let (answer, outcome) = oneshot::channel();
        let first = {
            let mut claims = Self::lock(&self.claims);
            claims.push((request.clone(), answer));
            claims.len() == 1
        };
        if first {
            self.send_claims().await;
        }
        outcome.await.unwrap_or_else(|_| Err(abandoned()))
    }

    async fn settle(&self, request: &SettleRequest) -> Result<Settlement, StoreError> {
        if !self.config.enabled {
            return self.inner.settle(request).await;
        }
        let (answer, outcome) = oneshot::channel();
        let first = {
            let mut settlements = Self::lock(&self.settlements);
            let until = settlements.unsettled.remove(request.owner.as_str()).unwrap_or(request.now_ms);
            settlements.waiting.push((request.clone(), answer));
            settlements.waiting_until_ms.push(until);
            settlements.first_waited_ms.get_or_insert(self.clock.now_ms());
            settlements.waiting.len() == 1
        };
        self.arrived.notify_waiters();
        if first {
            self.send_settlements().await;
        }
        outcome.await.unwrap_or_else(|_| Err(abandoned()))
    }

    async fn get(&self, key: &RecordKey) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.inner.get(key).await
    }

    async fn due_for_recovery(
        &self,
        operation: &Operation,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<RecordKey>, StoreError> {
        self.inner.due_for_recovery(operation, now_ms, limit).await
    }

    async fn reschedule_recovery(
        &self,
        key: &RecordKey,
        seen_updated_at_ms: i64,
        due_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.inner.reschedule_recovery(key, seen_updated_at_ms, due_ms).await
    }

    async fn claim_many(&self, requests: &[ClaimRequest]) -> Vec<Result<ClaimOutcome, StoreError>> {
        self.inner.claim_many(requests).await
    }

    async fn settle_many(&self, requests: &[SettleRequest]) -> Vec<Result<Settlement, StoreError>> {
        self.inner.settle_many(requests).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::{Idempotency, IdempotencyConfig};
    use crate::hash::PayloadHash;
    use crate::memory::InMemoryStore;
    use crate::store::Lease;

    /// The in-memory store, recording the size of every `claim_many` and `settle_many`.
    #[derive(Default)]
    struct Counting {
        inner: InMemoryStore,
        claims: Mutex<Vec<usize>>,
        settlements: Mutex<Vec<usize>>,
    }

    impl IdempotencyStore for Counting {
        async fn claim(&self, request: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
            self.inner.claim(request).await
        }
        async fn settle(&self, request: &SettleRequest) -> Result<Settlement, StoreError> {
            self.inner.settle(request).await
        }
        async fn get(&self, key: &RecordKey) -> Result<Option<IdempotencyRecord>, StoreError> {
            self.inner.get(key).await
        }
        async fn due_for_recovery(&self, op: &Operation, now: i64, limit: usize) -> Result<Vec<RecordKey>, StoreError> {
            self.inner.due_for_recovery(op, now, limit).await
        }
        async fn reschedule_recovery(&self, key: &RecordKey, seen: i64, due: Option<i64>) -> Result<bool, StoreError> {
            self.inner.reschedule_recovery(key, seen, due).await
        }
        async fn claim_many(&self, requests: &[ClaimRequest]) -> Vec<Result<ClaimOutcome, StoreError>> {
            self.claims.lock().unwrap().push(requests.len());
            self.inner.claim_many(requests).await
        }
        async fn settle_many(&self, requests: &[SettleRequest]) -> Vec<Result<Settlement, StoreError>> {
            self.settlements.lock().unwrap().push(requests.len());
            self.inner.settle_many(requests).await
        }
    }

    fn guard(enabled: bool, max_hold_ms: u64) -> Idempotency<Batching<Counting>> {
        let config = BatchingConfig {
            enabled,
            max_hold: Duration::from_millis(max_hold_ms),
            deadline_margin: Duration::from_millis(10),
        };
        Idempotency::new(Batching::new(Counting::default(), config), IdempotencyConfig::default())
    }

    fn key(i: usize) -> RecordKey {
        RecordKey::parse("process", "shop", &format!("order-{i}")).unwrap()
    }

    fn deadline() -> i64 {
        SystemClock.now_ms() + 60_000
    }

    /// Ten handlers that claim, work for different times, and settle.
    async fn ten_handlers(guard: &Idempotency<Batching<Counting>>, settle: impl Fn(usize) -> bool) -> Vec<Lease> {
        let settle = &settle;
        let handlers = (0..10).map(|i| async move {
            let hash = PayloadHash::of(&i).unwrap();
            let ClaimOutcome::Claimed(lease) = guard.claim(&key(i), &hash, deadline()).await.unwrap() else {
                panic!("a fresh key is claimed")
            };
            tokio::time::sleep(Duration::from_millis(5 * i as u64)).await;
            if settle(i) {
                let recorded = guard.complete(&lease, &serde_json::json!({"n": i})).await.unwrap();
                assert_eq!(recorded, Settlement::Recorded);
            }
            lease
        });
        futures::future::join_all(handlers).await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_claims_in_one_request_and_settles_in_one() {
        let guard = guard(true, 5_000);
        ten_handlers(&guard, |_| true).await;
        let store = guard.store().inner();
        assert_eq!(*store.claims.lock().unwrap(), [10], "one claim_many of ten");
        assert_eq!(*store.settlements.lock().unwrap(), [10], "the early finishers waited for the last");
        let completed = store.inner.snapshot().iter().filter(|r| r.result.is_some()).count();
        assert_eq!(completed, 10);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_sender_dropped_before_it_sends_fails_the_waiting_rather_than_stranding_them() {
        let guard = &guard(true, 60_000);
        let claims = (0..3).map(|i| async move {
            let hash = PayloadHash::of(&i).unwrap();
            match guard.claim(&key(i), &hash, deadline()).await.unwrap() {
                ClaimOutcome::Claimed(lease) => lease,
                other => panic!("a fresh key is claimed, got {other:?}"),
            }
        });
        let leases = futures::future::join_all(claims).await;
        let result = serde_json::json!({});
        // The first settlement sends for all and waits for the third lease, which never settles;
        // its caller gives up after 50 ms.
        let dropped = tokio::time::timeout(Duration::from_millis(50), guard.complete(&leases[0], &result));
        let waiting = async {
            tokio::task::yield_now().await;
            tokio::time::timeout(Duration::from_secs(5), guard.complete(&leases[1], &result)).await
        };
        let (dropped, waiting) = tokio::join!(dropped, waiting);
        assert!(dropped.is_err(), "the sender was dropped");
        let answer = waiting.expect("the waiting settlement is answered, not stranded until max_hold");
        assert!(matches!(answer, Err(StoreError::Transient(_))), "{answer:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lease_never_settled_holds_the_others_back_no_longer_than_max_hold() {
        let guard = guard(true, 100);
        let started = std::time::Instant::now();
        ten_handlers(&guard, |i| i != 3).await;
        let store = guard.store().inner();
        assert_eq!(*store.settlements.lock().unwrap(), [9], "sent without the unsettled one");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100) && waited < Duration::from_secs(2), "{waited:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn switched_off_every_call_goes_straight_through() {
        let guard = guard(false, 5_000);
        ten_handlers(&guard, |_| true).await;
        let store = guard.store().inner();
        assert!(store.claims.lock().unwrap().is_empty() && store.settlements.lock().unwrap().is_empty());
        assert_eq!(store.inner.snapshot().len(), 10);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_settlement_alone_is_sent_at_once() {
        let guard = guard(true, 5_000);
        let started = std::time::Instant::now();
        let hash = PayloadHash::of(&1).unwrap();
        let ClaimOutcome::Claimed(lease) = guard.claim(&key(1), &hash, deadline()).await.unwrap() else { panic!() };
        guard.complete(&lease, &serde_json::json!(1)).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(500), "nothing else was outstanding");
    }
}
