//! The DynamoDB store against the protocol's pure rules, on generated cases, in LocalStack, through
//! the idempotency crate's conformance kit: for any stored record (or none), any time relative to
//! its lease and TTL, same or different payload, owner or not, the store's conditional writes
//! decide and write exactly what `decide_claim`/`claimed_record`, `may_settle`/`settled_record`
//! and `may_reschedule_recovery` say. The in-memory store runs the same kit in the crate's tests,
//! and the model checker uses those functions directly, so the three cannot disagree unnoticed.
//! The batched path (PartiQL `BatchExecuteStatement`, then the single rounds for what it did not
//! decide) runs the same cases, a batch at a time.

use integration_tests::{aws, shared_stack};
use lambda_idempotency::conformance;
use lambda_idempotency::dynamodb::DynamoDbStore;

fn store(runtime: &tokio::runtime::Runtime) -> DynamoDbStore {
    let table = shared_stack().idempotency_table().to_owned();
    let client = runtime.block_on(async { aws_sdk_dynamodb::Client::new(&aws().await) });
    DynamoDbStore::new(client, table)
}

#[test]
fn claims_in_dynamodb_follow_decide_claim_and_claimed_record() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    conformance::claims(&runtime, &store(&runtime), 96);
}

#[test]
fn settlements_in_dynamodb_follow_may_settle_and_settled_record() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    conformance::settlements(&runtime, &store(&runtime), 96);
}

#[test]
fn recovery_rescheduling_in_dynamodb_follows_may_reschedule_recovery() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    conformance::reschedules(&runtime, &store(&runtime), 48);
}

#[test]
fn batched_claims_in_dynamodb_each_follow_the_single_claim_rule() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = store(&runtime);
    conformance::batched_claims(&runtime, &store, 32);
    conformance::repeated_keys(&runtime, &store);
}

#[test]
fn batched_settlements_in_dynamodb_each_follow_the_single_settlement_rule() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    conformance::batched_settlements(&runtime, &store(&runtime), 32);
}
