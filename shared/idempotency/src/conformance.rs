//! The conformance kit: any [`IdempotencyStore`] checked against the protocol's pure rules on
//! generated cases. For any stored record (or none), any time relative to its lease and TTL, the
//! same or another payload, owner or not, a store's claim, settlement and rescheduling must decide
//! and write exactly what [`decide_claim`]/[`claimed_record`], [`may_settle`]/[`settled_record`]
//! and [`may_reschedule_recovery`] say. The in-memory store runs it in this crate's tests; the
//! DynamoDB store runs it against LocalStack; a store of your own runs it the same way.
//!
//! ```
//! use lambda_idempotency::conformance::{self, Seed};
//! use lambda_idempotency::memory::InMemoryStore;
//!
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! conformance::claims(&runtime, &InMemoryStore::new(), 16);
//! conformance::settlements(&runtime, &InMemoryStore::new(), 16);
//! conformance::reschedules(&runtime, &InMemoryStore::new(), 8);
//! conformance::batched_claims(&runtime, &InMemoryStore::new(), 4);
//! conformance::batched_settlements(&runtime, &InMemoryStore::new(), 4);
//! ```

use std::future::Future;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::hash::PayloadHash;
use crate::key::RecordKey;
use crate::protocol::{
    ClaimDecision, ClaimRequest, IdempotencyRecord, OwnerToken, RecordStatus, Recovery, Refusal, Settle, SettleRequest,
    StoredFailure, claimed_record, decide_claim, may_reschedule_recovery, may_settle, now_s, settled_record,
};
use crate::store::{ClaimOutcome, IdempotencyStore, Settlement};

/// A store the kit can seed: it writes `record` as it is, unconditionally (tests only).
pub trait Seed: IdempotencyStore {
    /// Stores `record` under its partition key, replacing whatever is there.
    fn seed(&self, record: &IdempotencyRecord) -> impl Future<Output = ()> + Send;
}

impl Seed for crate::memory::InMemoryStore {
    async fn seed(&self, record: &IdempotencyRecord) {
        self.lock().insert(record.partition_key.clone(), record.clone());
    }
}

#[cfg(feature = "dynamodb")]
impl Seed for crate::dynamodb::DynamoDbStore {
    async fn seed(&self, record: &IdempotencyRecord) {
        self.put_unconditionally(record).await;
    }
}

/// "Now" for every generated case (epoch ms).
const NOW: i64 = 1_900_000_000_000;

/// A stored record's shape, relative to [`NOW`].
#[derive(Debug, Clone)]
struct Shape {
    status: RecordStatus,
    owner: Option<&'static str>,
    lease_rel_ms: i64,
    expires_rel_s: i64,
    same_payload: bool,
    attempts: u32,
    last_error: Option<&'static str>,
    recovery_due_rel_ms: Option<i64>,
    input: Option<&'static str>,
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        prop_oneof![Just(RecordStatus::InProgress), Just(RecordStatus::Completed), Just(RecordStatus::Failed)],
        prop_oneof![Just(None), Just(Some("owner-a")), Just(Some("owner-b"))],
        prop_oneof![Just(-1i64), Just(0), Just(1), -60_000i64..60_000],
        prop_oneof![Just(-1i64), Just(0), Just(1), -100i64..100],
        any::<bool>(),
        1u32..4,
        prop_oneof![Just(None), Just(Some("provider_503"))],
        (proptest::option::of(-60_000i64..60_000), prop_oneof![Just(None), Just(Some(r#"{"m":1}"#))]),
    )
        .prop_map(
            |(status, owner, lease_rel_ms, expires_rel_s, same_payload, attempts, last_error, (due, input))| Shape {
                status,
                owner,
                lease_rel_ms,
                expires_rel_s,
                same_payload,
                attempts,
                last_error,
                recovery_due_rel_ms: due,
                input,
            },
        )
}

/// What a claim may ask for: nothing, a due time only, or a due time and an input.
fn recovery() -> impl Strategy<Value = Option<Recovery>> {
    prop_oneof![
        Just(None),
        Just(Some(Recovery { due_ms: NOW + 70_000, input: None })),
        Just(Some(Recovery { due_ms: NOW + 70_000, input: Some(r#"{"m":2}"#.into()) })),
    ]
}

fn record(key: &RecordKey, shape: &Shape) -> IdempotencyRecord {
    IdempotencyRecord {
        partition_key: key.partition_key(),
        status: shape.status,
        payload_hash: PayloadHash::from_stored(if shape.same_payload { "hash-1" } else { "hash-2" }.into()),
        owner: shape.owner.map(|o| OwnerToken::from_stored(o.into())),
        lease_until_ms: NOW + shape.lease_rel_ms,
        result: (shape.status == RecordStatus::Completed).then(|| r#"{"charge_id":"ch_1"}"#.to_owned()),
        failure: (shape.status == RecordStatus::Failed)
            .then(|| StoredFailure { code: "card_declined".into(), detail: "insufficient funds".into() }),
        last_error: shape.last_error.map(str::to_owned),
        attempts: shape.attempts,
        created_at_ms: NOW - 100_000,
        updated_at_ms: NOW - 50_000,
        expires_at_s: now_s(NOW) + shape.expires_rel_s,
        recovery_due_ms: shape.recovery_due_rel_ms.map(|rel| NOW + rel),
        input: shape.input.map(str::to_owned),
    }
}

/// A key no earlier case used, in this run or an earlier one (a store may be shared).
fn fresh_key() -> RecordKey {
    let id = format!("conformance-{}", uuid::Uuid::new_v4());
    RecordKey::parse("process", "conformance", &id).expect("a valid key")
}

/// Seeds a case's record (none: nothing stored) under a fresh key.
async fn seeded<S: Seed>(store: &S, shape: Option<&Shape>) -> (RecordKey, Option<IdempotencyRecord>) {
    let key = fresh_key();
    let stored = shape.map(|s| record(&key, s));
    if let Some(stored) = &stored {
        store.seed(stored).await;
    }
    (key, stored)
}

/// A claim case: what is stored (or nothing), and what the claim asks for.
fn claim_case() -> impl Strategy<Value = (Option<Shape>, Option<Recovery>)> {
    (proptest::option::weighted(0.85, shape()), recovery())
}

fn claim_request(key: &RecordKey, recovery: Option<Recovery>) -> ClaimRequest {
    ClaimRequest {
        key: key.clone(),
        payload_hash: PayloadHash::from_stored("hash-1".into()),
        owner: OwnerToken::from_stored("owner-c".into()),
        now_ms: NOW,
        lease_until_ms: NOW + 30_000,
        expires_at_s: now_s(NOW) + 3600,
        recovery,
    }
}

/// What the protocol says a claim over `stored` answers and leaves behind.
fn check_claim(
    stored: Option<IdempotencyRecord>,
    request: &ClaimRequest,
    outcome: ClaimOutcome,
    after: Option<IdempotencyRecord>,
) -> Result<(), TestCaseError> {
    let decision = decide_claim(stored.as_ref(), &request.payload_hash, NOW);
    if let ClaimDecision::Refuse(refusal) = decision {
        let stored = stored.expect("a refusal needs a record");
        let expected = match refusal {
            Refusal::PayloadMismatch => ClaimOutcome::PayloadMismatch,
            Refusal::Completed => ClaimOutcome::AlreadyCompleted { result: stored.result.clone().unwrap_or_default() },
            Refusal::Failed => ClaimOutcome::AlreadyFailed(stored.failure.clone().expect("a stored failure")),
            Refusal::InProgress { lease_until_ms } => ClaimOutcome::InProgressElsewhere { lease_until_ms },
        };
        prop_assert_eq!(outcome, expected);
        prop_assert_eq!(after, Some(stored), "a refused claim writes nothing");
    } else {
        let expected = claimed_record(stored.as_ref(), decision, request);
        prop_assert!(
            matches!(&outcome, ClaimOutcome::Claimed(l) if l.attempt == expected.attempts),
            "{outcome:?} for {decision:?}"
        );
        prop_assert_eq!(after, Some(expected));
    }
    Ok(())
}

/// Runs `cases` generated claims against `store`; panics with the first case that disagrees.
pub fn claims<S: Seed>(runtime: &tokio::runtime::Runtime, store: &S, cases: u32) {
    let mut runner = TestRunner::new(Config { cases, ..Config::default() });
    let result = runner.run(&claim_case(), |(shape, recovery)| {
        runtime.block_on(async {
            let (key, stored) = seeded(store, shape.as_ref()).await;
            let request = claim_request(&key, recovery);
            let outcome = store.claim(&request).await.expect("the store answers");
            check_claim(stored, &request, outcome, store.get(&key).await.expect("the store answers"))
        })
    });
    if let Err(failure) = result {
        panic!("the store's claims disagree with the protocol: {failure}");
    }
}

/// Runs `cases` generated batches of 2 to 12 claims through [`IdempotencyStore::claim_many`]:
/// every claim of a batch must come to what it would alone.
pub fn batched_claims<S: Seed>(runtime: &tokio::runtime::Runtime, store: &S, cases: u32) {
    let mut runner = TestRunner::new(Config { cases, ..Config::default() });
    let result = runner.run(&proptest::collection::vec(claim_case(), 2..=12), |batch| {
        runtime.block_on(async {
            let mut cases = Vec::new();
            for (shape, recovery) in batch {
                let (key, stored) = seeded(store, shape.as_ref()).await;
                cases.push((claim_request(&key, recovery), stored));
            }
            let requests: Vec<ClaimRequest> = cases.iter().map(|(request, _)| request.clone()).collect();
            let outcomes = store.claim_many(&requests).await;
            prop_assert_eq!(outcomes.len(), cases.len());
            for ((request, stored), outcome) in cases.into_iter().zip(outcomes) {
                let after = store.get(&request.key).await.expect("the store answers");
                check_claim(stored, &request, outcome.expect("the store answers"), after)?;
            }
            Ok(())
        })
    });
    if let Err(failure) = result {
        panic!("the store's batched claims disagree with the protocol: {failure}");
    }
}

/// Two claims of one record in one batch (a message delivered twice in one SQS batch), by
/// different owners: the first claims it and the second finds it in progress, as if one ran
/// after the other. Panics if the store answers otherwise.
pub fn repeated_keys<S: Seed>(runtime: &tokio::runtime::Runtime, store: &S) {
    runtime.block_on(async {
        let key = fresh_key();
        let first = claim_request(&key, None);
        let second = ClaimRequest { owner: OwnerToken::from_stored("owner-d".into()), ..first.clone() };
        let outcomes = store.claim_many(&[first.clone(), second]).await;
        match outcomes.as_slice() {
            [Ok(ClaimOutcome::Claimed(lease)), Ok(ClaimOutcome::InProgressElsewhere { lease_until_ms })]
                if lease.owner == first.owner && *lease_until_ms == first.lease_until_ms => {}
            other => panic!("two claims of one record in one batch came to {other:?}"),
        }
    });
}

/// A settlement case: what is stored (or nothing), what is settled, and by which owner.
fn settle_case() -> impl Strategy<Value = (Option<Shape>, Settle, &'static str)> {
    let settle = prop_oneof![
        Just(Settle::Complete { result: r#"{"charge_id":"ch_9"}"#.to_owned() }),
        Just(Settle::Fail(StoredFailure { code: "card_declined".into(), detail: "do not honour".into() })),
        Just(Settle::Release { reason: "provider_timeout".into(), refund: false }),
        Just(Settle::Release { reason: "circuit_open".into(), refund: true }),
    ];
    (proptest::option::weighted(0.9, shape()), settle, prop_oneof![Just("owner-a"), Just("owner-b")])
}

fn settle_request(key: &RecordKey, settle: Settle, owner: &str) -> SettleRequest {
    let owner = OwnerToken::from_stored(owner.into());
    SettleRequest { key: key.clone(), owner, settle, now_ms: NOW, expires_at_s: now_s(NOW) + 7200 }
}

/// What the protocol says a settlement over `stored` answers and leaves behind.
fn check_settlement(
    stored: Option<IdempotencyRecord>,
    request: &SettleRequest,
    outcome: Settlement,
    after: Option<IdempotencyRecord>,
) -> Result<(), TestCaseError> {
    if may_settle(stored.as_ref(), &request.owner) {
        prop_assert_eq!(outcome, Settlement::Recorded);
        let expected =
            settled_record(stored.as_ref().expect("a settled record"), &request.settle, NOW, request.expires_at_s);
        prop_assert_eq!(after, Some(expected));
    } else {
        prop_assert_eq!(outcome, Settlement::NotOwner { current: stored.clone().map(Box::new) });
        prop_assert_eq!(after, stored, "a refused settlement writes nothing");
    }
    Ok(())
}

/// Runs `cases` generated settlements against `store`; panics with the first that disagrees.
pub fn settlements<S: Seed>(runtime: &tokio::runtime::Runtime, store: &S, cases: u32) {
    let mut runner = TestRunner::new(Config { cases, ..Config::default() });
    let result = runner.run(&settle_case(), |(shape, settle, owner)| {
        runtime.block_on(async {
            let (key, stored) = seeded(store, shape.as_ref()).await;
            let request = settle_request(&key, settle, owner);
            let outcome = store.settle(&request).await.expect("the store answers");
            check_settlement(stored, &request, outcome, store.get(&key).await.expect("the store answers"))
        })
    });
    if let Err(failure) = result {
        panic!("the store's settlements disagree with the protocol: {failure}");
    }
}

/// Runs `cases` generated batches of 2 to 12 settlements through
/// [`IdempotencyStore::settle_many`]: every settlement of a batch must come to what it would
/// alone.
pub fn batched_settlements<S: Seed>(runtime: &tokio::runtime::Runtime, store: &S, cases: u32) {
    let mut runner = TestRunner::new(Config { cases, ..Config::default() });
    let result = runner.run(&proptest::collection::vec(settle_case(), 2..=12), |batch| {
        runtime.block_on(async {
            let mut cases = Vec::new();
            for (shape, settle, owner) in batch {
                let (key, stored) = seeded(store, shape.as_ref()).await;
                cases.push((settle_request(&key, settle, owner), stored));
            }
            let requests: Vec<SettleRequest> = cases.iter().map(|(request, _)| request.clone()).collect();
            let outcomes = store.settle_many(&requests).await;
            prop_assert_eq!(outcomes.len(), cases.len());
            for ((request, stored), outcome) in cases.into_iter().zip(outcomes) {
                let after = store.get(&request.key).await.expect("the store answers");
                check_settlement(stored, &request, outcome.expect("the store answers"), after)?;
            }
            Ok(())
        })
    });
    if let Err(failure) = result {
        panic!("the store's batched settlements disagree with the protocol: {failure}");
    }
}

/// Runs `cases` generated recovery reschedules against `store`; panics with the first that
/// disagrees.
pub fn reschedules<S: Seed>(runtime: &tokio::runtime::Runtime, store: &S, cases: u32) {
    let seen = prop_oneof![Just(NOW - 50_000), Just(NOW - 49_999)];
    let due = proptest::option::of(Just(NOW + 3_600_000));
    let mut runner = TestRunner::new(Config { cases, ..Config::default() });
    let result = runner.run(&(proptest::option::weighted(0.9, shape()), seen, due), |(shape, seen, due)| {
        runtime.block_on(async {
            let (key, stored) = seeded(store, shape.as_ref()).await;
            let moved = store.reschedule_recovery(&key, seen, due).await.expect("the store answers");
            let after = store.get(&key).await.expect("the store answers");
            prop_assert_eq!(moved, may_reschedule_recovery(stored.as_ref(), seen));
            let expected = stored.map(|r| if moved { IdempotencyRecord { recovery_due_ms: due, ..r } } else { r });
            prop_assert_eq!(after, expected);
            Ok(())
        })
    });
    if let Err(failure) = result {
        panic!("the store's reschedules disagree with the protocol: {failure}");
    }
}

#[cfg(test)]
mod tests {
    use crate::memory::InMemoryStore;

    #[test]
    fn the_in_memory_store_conforms() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        super::claims(&runtime, &InMemoryStore::new(), 512);
        super::settlements(&runtime, &InMemoryStore::new(), 512);
        super::reschedules(&runtime, &InMemoryStore::new(), 256);
        super::batched_claims(&runtime, &InMemoryStore::new(), 64);
        super::batched_settlements(&runtime, &InMemoryStore::new(), 64);
        super::repeated_keys(&runtime, &InMemoryStore::new());
    }
}
