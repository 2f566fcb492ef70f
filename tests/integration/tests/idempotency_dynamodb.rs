//! The DynamoDB idempotency store against LocalStack: every claim outcome, concurrency, lease and
//! TTL expiry, owner-token conditions, scope isolation, and the request count per operation.

use std::sync::Arc;

use integration_tests::{aws, shared_stack, unique_scope};
use lambda_idempotency::dynamodb::DynamoDbStore;
use lambda_idempotency::{
    ClaimOutcome, Idempotency, IdempotencyConfig, IdempotencyKey, Lease, Operation, PayloadHash, RecordKey,
    RecordStatus, Scope, Settlement, StoredFailure,
};
use lambda_support::clock::{Clock, ManualClock};
use localenv::metering::RequestCounter;
use serde_json::json;

const T0: i64 = 1_900_000_000_000;

async fn store_with(counter: Option<&RequestCounter>) -> DynamoDbStore {
    let config = aws().await;
    let mut builder = aws_sdk_dynamodb::config::Builder::from(&config);
    if let Some(counter) = counter {
        builder = builder.interceptor(counter.clone());
    }
    DynamoDbStore::new(aws_sdk_dynamodb::Client::from_conf(builder.build()), shared_stack().idempotency_table())
}

async fn guard_at(clock: &ManualClock) -> Idempotency<DynamoDbStore> {
    Idempotency::with_clock(store_with(None).await, IdempotencyConfig::default(), Arc::new(clock.clone()))
}

fn key(scope: &Scope, key: &str) -> RecordKey {
    RecordKey::new(Operation::new("process").unwrap(), scope.clone(), IdempotencyKey::new(key).unwrap())
}

fn hash(v: serde_json::Value) -> PayloadHash {
    PayloadHash::of(&v).unwrap()
}

fn claimed(outcome: ClaimOutcome) -> Lease {
    match outcome {
        ClaimOutcome::Claimed(lease) => lease,
        other => panic!("expected a claim, got {other:?}"),
    }
}

#[tokio::test]
async fn every_claim_outcome() {
    let clock = ManualClock::at(T0);
    let g = guard_at(&clock).await;
    let scope = unique_scope("outcomes");
    let payload = hash(json!({"amount": 1000, "currency": "EUR"}));

    // Claimed, then in progress elsewhere with the lease end.
    let k = key(&scope, "k-complete");
    let lease = claimed(g.claim(&k, &payload, T0 + 30_000).await.unwrap());
    assert_eq!((lease.attempt, lease.resumed), (1, false));
    assert_eq!(
        g.claim(&k, &payload, T0 + 30_000).await.unwrap(),
        ClaimOutcome::InProgressElsewhere { lease_until_ms: T0 + 30_000 }
    );

    // Completed: the stored result, no work.
    assert_eq!(g.complete(&lease, &json!({"charge_id": "ch_1"})).await.unwrap(), Settlement::Recorded);
    assert_eq!(
        g.claim(&k, &payload, T0 + 30_000).await.unwrap(),
        ClaimOutcome::AlreadyCompleted { result: r#"{"charge_id":"ch_1"}"#.into() }
    );

    // Failed permanently: the stored failure.
    let k = key(&scope, "k-fail");
    let lease = claimed(g.claim(&k, &payload, T0 + 30_000).await.unwrap());
    let failure = StoredFailure { code: "card_declined".into(), detail: "insufficient funds".into() };
    assert_eq!(g.fail_permanently(&lease, failure.clone()).await.unwrap(), Settlement::Recorded);
    assert_eq!(g.claim(&k, &payload, T0 + 30_000).await.unwrap(), ClaimOutcome::AlreadyFailed(failure));

    // Key reused with a different payload, whatever the record's state.
    assert_eq!(g.claim(&k, &hash(json!({"amount": 1001})), T0 + 30_000).await.unwrap(), ClaimOutcome::PayloadMismatch);
    let k = key(&scope, "k-live");
    claimed(g.claim(&k, &payload, T0 + 30_000).await.unwrap());
    assert_eq!(g.claim(&k, &hash(json!({"amount": 1})), T0 + 30_000).await.unwrap(), ClaimOutcome::PayloadMismatch);
}

#[tokio::test]
async fn thirty_two_concurrent_claims_give_exactly_one_claim() {
    let g = Arc::new(guard_at(&ManualClock::at(T0)).await);
    let k = key(&unique_scope("race"), "k-race");
    let payload = hash(json!({"amount": 5}));
    let claims = (0..32).map(|_| {
        let (g, k, payload) = (g.clone(), k.clone(), payload.clone());
        tokio::spawn(async move { g.claim(&k, &payload, T0 + 60_000).await.unwrap() })
    });
    let outcomes: Vec<ClaimOutcome> = futures::future::join_all(claims).await.into_iter().map(Result::unwrap).collect();
    let winners = outcomes.iter().filter(|o| matches!(o, ClaimOutcome::Claimed(_))).count();
    let waiting = outcomes.iter().filter(|o| matches!(o, ClaimOutcome::InProgressElsewhere { .. })).count();
    assert_eq!((winners, waiting), (1, 31), "{outcomes:?}");
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_stale_owner_is_locked_out() {
    let clock = ManualClock::at(T0);
    let g = guard_at(&clock).await;
    let k = key(&unique_scope("takeover"), "k-takeover");
    let payload = hash(json!({"amount": 7}));
    let stale = claimed(g.claim(&k, &payload, T0 + 1_000).await.unwrap());

    clock.advance_ms(1_001);
    let fresh = claimed(g.claim(&k, &payload, T0 + 60_000).await.unwrap());
    assert_eq!(fresh.attempt, 2);
    assert_ne!(fresh.owner, stale.owner);

    // The stale worker can neither complete, fail nor release the new owner's claim...
    for outcome in [
        g.complete(&stale, &json!({"charge_id": "stale"})).await.unwrap(),
        g.fail_permanently(&stale, StoredFailure { code: "x".into(), detail: "stale".into() }).await.unwrap(),
        g.release(&stale, "stale").await.unwrap(),
    ] {
        let Settlement::NotOwner { current: Some(current) } = outcome else { panic!("stale owner must be refused") };
        assert_eq!(current.owner.as_ref(), Some(&fresh.owner));
    }
    // ...and the record is untouched: still the new owner's, in progress, without a result.
    let record = g.get(&k).await.unwrap().unwrap();
    assert_eq!(record.status, RecordStatus::InProgress);
    assert_eq!(record.owner.as_ref(), Some(&fresh.owner));
    assert_eq!(record.result, None);
    assert_eq!(g.complete(&fresh, &json!({"charge_id": "ch_new"})).await.unwrap(), Settlement::Recorded);
}

#[tokio::test]
async fn a_released_claim_is_claimable_at_once_and_keeps_its_history() {
    let clock = ManualClock::at(T0);
    let g = guard_at(&clock).await;
    let k = key(&unique_scope("release"), "k-release");
    let payload = hash(json!({"amount": 9}));
    let first = claimed(g.claim(&k, &payload, T0 + 60_000).await.unwrap());
    clock.advance_ms(10);
    assert_eq!(g.release(&first, "provider answered 503").await.unwrap(), Settlement::Recorded);
    // Released: the former owner can no longer settle.
    assert!(matches!(g.complete(&first, &json!({})).await.unwrap(), Settlement::NotOwner { .. }));

    clock.advance_ms(10);
    let second = claimed(g.claim(&k, &payload, T0 + 60_000).await.unwrap());
    assert_eq!((second.attempt, second.resumed), (2, true), "a take-over resumes the record");
    let record = g.get(&k).await.unwrap().unwrap();
    assert_eq!(record.created_at_ms, T0);
    assert_eq!(record.last_error.as_deref(), Some("provider answered 503"));
}

#[tokio::test]
async fn a_record_past_its_ttl_counts_as_absent() {
    let clock = ManualClock::at(T0);
    let config = IdempotencyConfig { retention: std::time::Duration::from_secs(60), ..IdempotencyConfig::default() };
    let g = Idempotency::with_clock(store_with(None).await, config, Arc::new(clock.clone()));
    let k = key(&unique_scope("ttl"), "k-ttl");
    let lease = claimed(g.claim(&k, &hash(json!({"v": 1})), T0 + 1_000).await.unwrap());
    g.complete(&lease, &json!({"charge_id": "old"})).await.unwrap();

    // DynamoDB has not deleted it (LocalStack never does on its own; AWS may take 48 h)...
    clock.advance_ms(61_000 + 1_000);
    assert!(g.get(&k).await.unwrap().is_some());
    // ...but a claim treats it as absent: a fresh record, even for another payload.
    let fresh = claimed(g.claim(&k, &hash(json!({"v": 2})), T0 + 100_000).await.unwrap());
    assert_eq!((fresh.attempt, fresh.resumed), (1, false), "a record past its TTL is replaced afresh");
    let record = g.get(&k).await.unwrap().unwrap();
    assert_eq!(record.result, None);
    assert_eq!(record.created_at_ms, clock.now_ms());
}

#[tokio::test]
async fn scopes_are_isolated() {
    let g = guard_at(&ManualClock::at(T0)).await;
    let payload = hash(json!({"amount": 1}));
    let (a, b) = (unique_scope("tenant-a"), unique_scope("tenant-b"));
    let lease_a = claimed(g.claim(&key(&a, "shared-key"), &payload, T0 + 60_000).await.unwrap());
    g.complete(&lease_a, &json!({"tenant": "a"})).await.unwrap();
    // Same key, other scope, even another payload: its own record, claimed afresh.
    let lease_b = claimed(g.claim(&key(&b, "shared-key"), &hash(json!({"amount": 2})), T0 + 60_000).await.unwrap());
    assert_eq!(lease_b.attempt, 1);
    assert_eq!(
        g.claim(&key(&a, "shared-key"), &payload, T0 + 60_000).await.unwrap(),
        ClaimOutcome::AlreadyCompleted { result: r#"{"tenant":"a"}"#.into() }
    );
}

/// The request budget of the protocol, counted on the wire by an SDK interceptor.
#[tokio::test]
async fn a_first_claim_and_completion_cost_two_requests_and_a_duplicate_one() {
    let counter = RequestCounter::new();
    let g = Idempotency::with_clock(
        store_with(Some(&counter)).await,
        IdempotencyConfig::default(),
        Arc::new(ManualClock::at(T0)),
    );
    let k = key(&unique_scope("budget"), "k-budget");
    let payload = hash(json!({"amount": 3}));

    let lease = claimed(g.claim(&k, &payload, T0 + 60_000).await.unwrap());
    g.complete(&lease, &json!({"charge_id": "ch"})).await.unwrap();
    assert_eq!(counter.by_operation(), [("UpdateItem".to_owned(), 2)].into());

    counter.reset();
    assert!(matches!(g.claim(&k, &payload, T0 + 60_000).await.unwrap(), ClaimOutcome::AlreadyCompleted { .. }));
    assert_eq!(counter.by_operation(), [("UpdateItem".to_owned(), 1)].into());
}

/// The batched path's budget: ten handlers running side by side claim in one
/// `BatchExecuteStatement` and settle in one; their duplicates cost that one request and one
/// `BatchGetItem` (a refused `INSERT` does not return the item, so the record is read once).
#[tokio::test]
async fn a_batch_of_ten_is_claimed_in_one_request_and_settled_in_one() {
    use lambda_idempotency::batching::{Batching, BatchingConfig};
    let counter = RequestCounter::new();
    let store = Batching::new(store_with(Some(&counter)).await, BatchingConfig::default());
    let g = Idempotency::new(store, IdempotencyConfig::default());
    let scope = unique_scope("batch-budget");
    let deadline = lambda_support::clock::SystemClock.now_ms() + 60_000;
    let payload = hash(json!({"amount": 3}));
    let handle = |i: usize| {
        let (g, k, payload) = (&g, key(&scope, &format!("k-{i}")), payload.clone());
        async move {
            match g.claim(&k, &payload, deadline).await.unwrap() {
                ClaimOutcome::Claimed(lease) => {
                    assert_eq!(g.complete(&lease, &json!({"n": i})).await.unwrap(), Settlement::Recorded);
                    true
                }
                ClaimOutcome::AlreadyCompleted { .. } => false,
                other => panic!("unexpected {other:?}"),
            }
        }
    };

    let fresh = futures::future::join_all((0..10).map(handle)).await;
    assert!(fresh.iter().all(|claimed| *claimed), "every fresh key is claimed");
    assert_eq!(counter.by_operation(), [("BatchExecuteStatement".to_owned(), 2)].into());
    assert_eq!(counter.items_by_operation(), [("BatchExecuteStatement".to_owned(), 20)].into());

    counter.reset();
    let again = futures::future::join_all((0..10).map(handle)).await;
    assert!(again.iter().all(|claimed| !*claimed), "every duplicate gets the stored result");
    assert_eq!(
        counter.by_operation(),
        [("BatchExecuteStatement".to_owned(), 1), ("BatchGetItem".to_owned(), 1)].into()
    );
}
