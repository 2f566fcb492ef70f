//! The face callers use: a store plus a config object with sensible defaults and a clock. It
//! turns "claim this key for this payload until my deadline" into the exact request the
//! protocol needs (owner token, lease, TTL).

use std::sync::Arc;
use std::time::Duration;

use crate::hash::PayloadHash;
use crate::key::{Operation, RecordKey};
use crate::protocol::{
    ClaimRequest, IdempotencyRecord, OwnerToken, Recovery, Settle, SettleRequest, StoredFailure, now_s,
};
use crate::store::{ClaimOutcome, IdempotencyStore, Lease, Settlement, StoreError};
use lambda_support::clock::{Clock, SystemClock};

/// How long records live and how long a claim may last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyConfig {
    /// How long a record (and so the protection against duplicates) outlives its last change.
    /// Default: 7 days, longer than any client retries or SQS retention.
    pub retention: Duration,
    /// Upper bound on any lease, whatever deadline the caller passes. Default: 15 minutes (the
    /// longest Lambda timeout).
    pub max_lease: Duration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self { retention: Duration::from_secs(7 * 24 * 3600), max_lease: Duration::from_secs(15 * 60) }
    }
}

/// Idempotent execution over a store.
#[derive(Clone)]
pub struct Idempotency<S> {
    store: S,
    config: IdempotencyConfig,
    clock: Arc<dyn Clock>,
}

impl<S: IdempotencyStore> Idempotency<S> {
    /// Over `store`, with the real clock.
    pub fn new(store: S, config: IdempotencyConfig) -> Self {
        Self::with_clock(store, config, Arc::new(SystemClock))
    }

    /// Over `store`, with a clock of the caller's (tests move time by hand).
    pub fn with_clock(store: S, config: IdempotencyConfig, clock: Arc<dyn Clock>) -> Self {
        Self { store, config, clock }
    }

    /// The store underneath, for reads the guard does not wrap (operators' queries).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The retention and lease cap every claim is made with.
    pub fn config(&self) -> &IdempotencyConfig {
        &self.config
    }

    /// "Now" by this guard's clock (epoch ms).
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Claims `key` for a payload with fingerprint `payload_hash`. The lease ends at
    /// `deadline_ms` (a Lambda passes its invocation deadline), capped by `max_lease`.
    pub async fn claim(
        &self,
        key: &RecordKey,
        payload_hash: &PayloadHash,
        deadline_ms: i64,
    ) -> Result<ClaimOutcome, StoreError> {
        self.claim_recoverable(key, payload_hash, deadline_ms, None).await
    }

    /// The same, leaving what a completer needs ([`Recovery`]) should this claim's work never be
    /// settled: the record then shows up in [`Self::due_for_recovery`] once the recovery is due.
    pub async fn claim_recoverable(
        &self,
        key: &RecordKey,
        payload_hash: &PayloadHash,
        deadline_ms: i64,
        recovery: Option<Recovery>,
    ) -> Result<ClaimOutcome, StoreError> {
        let now_ms = self.now_ms();
        let max_lease_ms = i64::try_from(self.config.max_lease.as_millis()).unwrap_or(i64::MAX);
        let request = ClaimRequest {
            key: key.clone(),
            payload_hash: payload_hash.clone(),
            owner: OwnerToken::random(),
            now_ms,
            lease_until_ms: deadline_ms.min(now_ms.saturating_add(max_lease_ms)),
            expires_at_s: self.expires_at_s(now_ms),
            recovery,
        };
        self.store.claim(&request).await
    }

    /// Records success with the result to replay to duplicates.
    pub async fn complete(&self, lease: &Lease, result: &serde_json::Value) -> Result<Settlement, StoreError> {
        self.settle(lease, Settle::Complete { result: result.to_string() }).await
    }

    /// Records a permanent failure, replayed to duplicates and never retried.
    pub async fn fail_permanently(&self, lease: &Lease, failure: StoredFailure) -> Result<Settlement, StoreError> {
        self.settle(lease, Settle::Fail(failure)).await
    }

    /// Gives the claim up after a retryable failure, so the next delivery can claim at once.
    pub async fn release(&self, lease: &Lease, reason: &str) -> Result<Settlement, StoreError> {
        self.settle(lease, Settle::Release { reason: reason.to_owned(), refund: false }).await
    }

    /// The same, giving the attempt back: the failure is not the operation's own (a provider
    /// outage the circuit breaker recognised), so it must not spend the retry budget.
    pub async fn release_refunded(&self, lease: &Lease, reason: &str) -> Result<Settlement, StoreError> {
        self.settle(lease, Settle::Release { reason: reason.to_owned(), refund: true }).await
    }

    /// Reads the record as stored, expired or not: a status read, never a claim.
    pub async fn get(&self, key: &RecordKey) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.store.get(key).await
    }

    /// Up to `limit` records of `operation` whose recovery is due now, as keys (the index may lag
    /// the table: read each record back and check [`IdempotencyRecord::is_due_for_recovery`]).
    pub async fn due_for_recovery(&self, operation: &Operation, limit: usize) -> Result<Vec<RecordKey>, StoreError> {
        self.store.due_for_recovery(operation, self.now_ms(), limit).await
    }

    /// Moves `record`'s recovery to `due_ms`, or ends it (`None`: someone else owns the record's
    /// fate), unless the record changed since it was read. Whether it was moved.
    pub async fn reschedule_recovery(
        &self,
        record: &IdempotencyRecord,
        due_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        let key = RecordKey::from_partition_key(&record.partition_key)
            .map_err(|e| StoreError::Malformed { key: record.partition_key.clone(), reason: e.to_string() })?;
        self.store.reschedule_recovery(&key, record.updated_at_ms, due_ms).await
    }

    async fn settle(&self, lease: &Lease, settle: Settle) -> Result<Settlement, StoreError> {
        // Error texts may quote a remote answer of any length: bounded, a record stays far
        // below DynamoDB's 400 KB item limit.
        let settle = match settle {
            Settle::Release { reason, refund } => Settle::Release { reason: bounded(reason), refund },
            Settle::Fail(StoredFailure { code, detail }) => {
                Settle::Fail(StoredFailure { code: bounded(code), detail: bounded(detail) })
            }
            complete @ Settle::Complete { .. } => complete,
        };
        let now_ms = self.now_ms();
        let request = SettleRequest {
            key: lease.key.clone(),
            owner: lease.owner.clone(),
            settle,
            now_ms,
            expires_at_s: self.expires_at_s(now_ms),
        };
        self.store.settle(&request).await
    }

    fn expires_at_s(&self, now_ms: i64) -> i64 {
        now_s(now_ms).saturating_add(i64::try_from(self.config.retention.as_secs()).unwrap_or(i64::MAX))
    }
}

/// Longest error text (a release reason, a failure's code or reason) a record keeps.
pub const MAX_ERROR_TEXT_BYTES: usize = 1024;

fn bounded(mut text: String) -> String {
    if text.len() > MAX_ERROR_TEXT_BYTES {
        let mut cut = MAX_ERROR_TEXT_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{IdempotencyKey, Operation, Scope};
    use crate::memory::InMemoryStore;
    use lambda_support::clock::ManualClock;
    use serde_json::json;

    fn guard(clock: &ManualClock) -> Idempotency<InMemoryStore> {
        Idempotency::with_clock(InMemoryStore::new(), IdempotencyConfig::default(), Arc::new(clock.clone()))
    }

    fn key(scope: &str) -> RecordKey {
        RecordKey::new(
            Operation::new("process").unwrap(),
            Scope::new(scope).unwrap(),
            IdempotencyKey::new("k-1").unwrap(),
        )
    }

    fn hash(v: serde_json::Value) -> PayloadHash {
        PayloadHash::of(&v).unwrap()
    }

    #[tokio::test]
    async fn the_lease_is_the_deadline_capped_by_the_maximum() {
        let clock = ManualClock::at(1_000_000);
        let g = guard(&clock);
        let ClaimOutcome::Claimed(lease) = g.claim(&key("a"), &hash(json!(1)), 1_000_000 + 5_000).await.unwrap() else {
            panic!("first claim must succeed")
        };
        assert_eq!(lease.lease_until_ms, 1_005_000);
        let ClaimOutcome::Claimed(capped) = g.claim(&key("b"), &hash(json!(1)), i64::MAX).await.unwrap() else {
            panic!("first claim must succeed")
        };
        assert_eq!(capped.lease_until_ms, 1_000_000 + 15 * 60 * 1000);
    }

    #[tokio::test]
    async fn completed_work_is_replayed_and_records_expire_after_retention() {
        let clock = ManualClock::at(10_000);
        let g = guard(&clock);
        let k = key("a");
        let ClaimOutcome::Claimed(lease) = g.claim(&k, &hash(json!({"a": 1})), 20_000).await.unwrap() else {
            panic!("first claim must succeed")
        };
        assert_eq!(g.complete(&lease, &json!({"charge": "ch_1"})).await.unwrap(), Settlement::Recorded);
        assert_eq!(
            g.claim(&k, &hash(json!({"a": 1})), 20_000).await.unwrap(),
            ClaimOutcome::AlreadyCompleted { result: r#"{"charge":"ch_1"}"#.into() }
        );
        clock.advance_ms(7 * 24 * 3600 * 1000 + 1000);
        assert!(
            matches!(g.claim(&k, &hash(json!({"a": 2})), i64::MAX).await.unwrap(), ClaimOutcome::Claimed(l) if l.attempt == 1)
        );
    }
}
