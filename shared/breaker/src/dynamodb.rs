//! Breaker items in DynamoDB: one item per provider, `pk = breaker#{name}`, in the idempotency
//! table (the processor already reads and writes there; no record key can take this form, since
//! record keys have three `#`-separated parts). Every write is one `PutItem` conditional on the
//! version it was computed from; a refused write returns the item as it stands (ALL_OLD), so a
//! race costs no extra read.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use super::protocol::{BreakerState, Circuit};
use super::store::{BreakerStore, BreakerStoreError, Written};
use lambda_support::aws::dynamodb::{Item, n, refused, s};
use lambda_support::aws::errors::classify;

/// Breaker items in `table`.
#[derive(Debug, Clone)]
pub struct DynamoDbBreakerStore {
    client: Client,
    table: String,
}

impl DynamoDbBreakerStore {
    /// Over `table` (the idempotency table).
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }
}

/// The attribute naming the write that stored an item (see [`DynamoDbBreakerStore::write`]).
pub const WRITE_ID: &str = "write_id";

/// The partition key of the breaker named `name`.
pub fn breaker_partition(name: &str) -> String {
    format!("breaker#{name}")
}

fn item(pk: &str, state: &BreakerState) -> Item {
    let mut item = Item::new();
    item.insert("pk".into(), s(pk));
    item.insert("circuit".into(), s(state.circuit.as_str()));
    for (name, value) in [
        ("failures", i64::from(state.failures)),
        ("window_start_ms", state.window_start_ms),
        ("open_until_ms", state.open_until_ms),
        ("opened_at_ms", state.opened_at_ms),
        ("opened", i64::from(state.opened)),
        ("probe_successes", i64::from(state.probe_successes)),
        ("probe_failures", i64::from(state.probe_failures)),
        ("probe_until_ms", state.probe_until_ms),
        ("version", i64::try_from(state.version).unwrap_or(i64::MAX)),
    ] {
        item.insert(name.into(), n(value));
    }
    if let Some(owner) = &state.probe_owner {
        item.insert("probe_owner".into(), s(owner));
    }
    item
}

fn state(item: &Item) -> Result<BreakerState, BreakerStoreError> {
    let bad = |what: &str| BreakerStoreError(format!("breaker item: {what}"));
    let number = |name: &str| -> Result<i64, BreakerStoreError> {
        match item.get(name) {
            Some(AttributeValue::N(v)) => v.parse().map_err(|_| bad(name)),
            None => Ok(0),
            Some(_) => Err(bad(name)),
        }
    };
    let small = |name: &str| -> Result<u32, BreakerStoreError> { u32::try_from(number(name)?).map_err(|_| bad(name)) };
    let circuit = match item.get("circuit") {
        Some(AttributeValue::S(text)) => Circuit::parse(text).ok_or_else(|| bad("unknown circuit"))?,
        _ => return Err(bad("circuit missing")),
    };
    Ok(BreakerState {
        circuit,
        failures: small("failures")?,
        window_start_ms: number("window_start_ms")?,
        open_until_ms: number("open_until_ms")?,
        opened_at_ms: number("opened_at_ms")?,
        opened: small("opened")?,
        probe_successes: small("probe_successes")?,
        probe_failures: small("probe_failures")?,
        probe_owner: item.get("probe_owner").and_then(|v| v.as_s().ok()).cloned(),
        probe_until_ms: number("probe_until_ms")?,
        version: u64::try_from(number("version")?).map_err(|_| bad("version"))?,
    })
}

impl BreakerStore for DynamoDbBreakerStore {
    async fn read(&self, name: &str) -> Result<BreakerState, BreakerStoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(breaker_partition(name)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| BreakerStoreError(classify(&e).description))?;
        out.item().map(state).transpose().map(Option::unwrap_or_default)
    }

    async fn write(&self, name: &str, next: &BreakerState) -> Result<Written, BreakerStoreError> {
        let pk = breaker_partition(name);
        let expected = next.version.saturating_sub(1);
        // Marks this write: should its answer be lost, the SDK's retry finds the item refused
        // and can tell its own write from another instance's (which may hold the same state).
        let write_id = uuid::Uuid::new_v4().to_string();
        let mut stored = item(&pk, next);
        stored.insert(WRITE_ID.into(), s(&write_id));
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(stored))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        put = if expected == 0 {
            put.condition_expression("attribute_not_exists(pk)")
        } else {
            put.condition_expression("version = :expected")
                .expression_attribute_values(":expected", n(i64::try_from(expected).unwrap_or(i64::MAX)))
        };
        match put.send().await {
            Ok(_) => Ok(Written::Stored),
            Err(e) => match refused(&e) {
                Some(Some(found)) if found.get(WRITE_ID).and_then(|v| v.as_s().ok()) == Some(&write_id) => {
                    Ok(Written::Stored)
                }
                Some(found) => Ok(Written::Conflict(found.map(state).transpose()?.unwrap_or_default())),
                None => Err(BreakerStoreError(classify(&e).description)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_survive_the_round_trip() {
        let open = BreakerState {
            circuit: Circuit::Open,
            failures: 0,
            window_start_ms: 0,
            open_until_ms: 9,
            opened_at_ms: 3,
            opened: 2,
            probe_successes: 1,
            probe_failures: 1,
            probe_owner: Some("i-1".into()),
            probe_until_ms: 12,
            version: 7,
        };
        assert_eq!(state(&item("breaker#p", &open)).unwrap(), open);
        assert_eq!(state(&item("breaker#p", &BreakerState::default())).unwrap(), BreakerState::default());
    }
}
