//! The DynamoDB adapter against the protocol's pure rules, on generated cases, in LocalStack: for
//! any stored record (or none), any time relative to its lease and TTL, same or different payload,
//! owner or not, the adapter's conditional writes decide and write exactly what
//! `decide_claim`/`claimed_record`, `may_settle`/`settled_record` and `may_reschedule_recovery`
//! say (recovery due times and stored inputs included). The in-memory store and
//! the model checker use those functions directly, so the three cannot disagree unnoticed.

use aws_sdk_dynamodb::Client;
use integration_tests::{aws, shared_stack};
use payments_core::idempotency::dynamodb::DynamoDbStore;
use payments_core::idempotency::dynamodb::attributes::item_from_record;
use payments_core::idempotency::protocol::{
    ClaimDecision, ClaimRequest, IdempotencyRecord, OwnerToken, RecordStatus, Recovery, Refusal, Settle, SettleRequest,
    StoredFailure, claimed_record, decide_claim, may_reschedule_recovery, may_settle, now_s, settled_record,
};
use payments_core::idempotency::{
    ClaimOutcome, IdempotencyKey, IdempotencyStore, Operation, PayloadHash, RecordKey, Scope, Settlement,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const NOW: i64 = 1_900_000_000_000;

/// A stored record's shape, relative to NOW.
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
            .then(|| StoredFailure { code: "card_declined".into(), reason: "insufficient funds".into() }),
        last_error: shape.last_error.map(str::to_owned),
        attempts: shape.attempts,
        created_at_ms: NOW - 100_000,
        updated_at_ms: NOW - 50_000,
        expires_at_s: now_s(NOW) + shape.expires_rel_s,
        recovery_due_ms: shape.recovery_due_rel_ms.map(|rel| NOW + rel),
        input: shape.input.map(str::to_owned),
    }
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    client: Client,
    store: DynamoDbStore,
}

impl Harness {
    fn new() -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let table = shared_stack().idempotency_table().to_owned();
        let client = runtime.block_on(async { Client::new(&aws().await) });
        Self { store: DynamoDbStore::new(client.clone(), table), client, runtime }
    }

    fn fresh_key(&self) -> RecordKey {
        let id = uuid_like();
        RecordKey::new(
            Operation::new("process").unwrap(),
            Scope::new("conformance").unwrap(),
            IdempotencyKey::new(&id).unwrap(),
        )
    }

    async fn seed(&self, stored: Option<&IdempotencyRecord>) {
        if let Some(stored) = stored {
            self.client
                .put_item()
                .table_name(self.store.table())
                .set_item(Some(item_from_record(stored)))
                .send()
                .await
                .unwrap();
        }
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("c-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

#[test]
fn claims_in_dynamodb_follow_decide_claim_and_claimed_record() {
    let h = Harness::new();
    let mut runner = TestRunner::new(Config { cases: 96, ..Config::default() });
    runner
        .run(&(proptest::option::weighted(0.85, shape()), recovery()), |(shape, recovery)| {
            h.runtime.block_on(async {
                let key = h.fresh_key();
                let stored = shape.as_ref().map(|s| record(&key, s));
                h.seed(stored.as_ref()).await;
                let request = ClaimRequest {
                    key: key.clone(),
                    payload_hash: PayloadHash::from_stored("hash-1".into()),
                    owner: OwnerToken::from_stored("owner-c".into()),
                    now_ms: NOW,
                    lease_until_ms: NOW + 30_000,
                    expires_at_s: now_s(NOW) + 3600,
                    recovery,
                };
                let outcome = h.store.claim(&request).await.unwrap();
                let after = h.store.get(&key).await.unwrap();
                let decision = decide_claim(stored.as_ref(), &request.payload_hash, NOW);
                match decision {
                    ClaimDecision::Create | ClaimDecision::TakeOver => {
                        let expected = claimed_record(stored.as_ref(), decision, &request);
                        prop_assert!(
                            matches!(&outcome, ClaimOutcome::Claimed(l) if l.attempt == expected.attempts),
                            "{outcome:?} for {decision:?}"
                        );
                        prop_assert_eq!(after, Some(expected));
                    }
                    ClaimDecision::Refuse(refusal) => {
                        let stored = stored.clone().unwrap();
                        let expected = match refusal {
                            Refusal::PayloadMismatch => ClaimOutcome::PayloadMismatch,
                            Refusal::Completed => {
                                ClaimOutcome::AlreadyCompleted { result: stored.result.clone().unwrap() }
                            }
                            Refusal::Failed => ClaimOutcome::AlreadyFailed(stored.failure.clone().unwrap()),
                            Refusal::InProgress { lease_until_ms } => {
                                ClaimOutcome::InProgressElsewhere { lease_until_ms }
                            }
                        };
                        prop_assert_eq!(outcome, expected);
                        prop_assert_eq!(after, Some(stored), "a refused claim writes nothing");
                    }
                }
                Ok(())
            })
        })
        .unwrap();
}

#[test]
fn settlements_in_dynamodb_follow_may_settle_and_settled_record() {
    let h = Harness::new();
    let settle = prop_oneof![
        Just(Settle::Complete { result: r#"{"charge_id":"ch_9"}"#.to_owned() }),
        Just(Settle::Fail(StoredFailure { code: "card_declined".into(), reason: "do not honour".into() })),
        Just(Settle::Release { reason: "provider_timeout".into(), refund: false }),
        Just(Settle::Release { reason: "circuit_open".into(), refund: true }),
    ];
    let owner = prop_oneof![Just("owner-a"), Just("owner-b")];
    let mut runner = TestRunner::new(Config { cases: 96, ..Config::default() });
    runner
        .run(&(proptest::option::weighted(0.9, shape()), settle, owner), |(shape, settle, owner)| {
            h.runtime.block_on(async {
                let key = h.fresh_key();
                let stored = shape.as_ref().map(|s| record(&key, s));
                h.seed(stored.as_ref()).await;
                let owner = OwnerToken::from_stored(owner.into());
                let expires = now_s(NOW) + 7200;
                let request = SettleRequest {
                    key: key.clone(),
                    owner: owner.clone(),
                    settle: settle.clone(),
                    now_ms: NOW,
                    expires_at_s: expires,
                };
                let outcome = h.store.settle(&request).await.unwrap();
                let after = h.store.get(&key).await.unwrap();
                if may_settle(stored.as_ref(), &owner) {
                    prop_assert_eq!(outcome, Settlement::Recorded);
                    prop_assert_eq!(after, Some(settled_record(stored.as_ref().unwrap(), &settle, NOW, expires)));
                } else {
                    prop_assert_eq!(outcome, Settlement::NotOwner { current: stored.clone().map(Box::new) });
                    prop_assert_eq!(after, stored, "a refused settlement writes nothing");
                }
                Ok(())
            })
        })
        .unwrap();
}

#[test]
fn recovery_rescheduling_in_dynamodb_follows_may_reschedule_recovery() {
    let h = Harness::new();
    let seen = prop_oneof![Just(NOW - 50_000), Just(NOW - 49_999)];
    let due = proptest::option::of(Just(NOW + 3_600_000));
    let mut runner = TestRunner::new(Config { cases: 48, ..Config::default() });
    runner
        .run(&(proptest::option::weighted(0.9, shape()), seen, due), |(shape, seen, due)| {
            h.runtime.block_on(async {
                let key = h.fresh_key();
                let stored = shape.as_ref().map(|s| record(&key, s));
                h.seed(stored.as_ref()).await;
                let moved = h.store.reschedule_recovery(&key, seen, due).await.unwrap();
                let after = h.store.get(&key).await.unwrap();
                prop_assert_eq!(moved, may_reschedule_recovery(stored.as_ref(), seen));
                let expected = stored.map(|r| if moved { IdempotencyRecord { recovery_due_ms: due, ..r } } else { r });
                prop_assert_eq!(after, expected);
                Ok(())
            })
        })
        .unwrap();
}
