//! Conversion between [`IdempotencyRecord`] and DynamoDB items. Public so that tests can seed
//! arbitrary records and read raw items.

use aws_sdk_dynamodb::types::AttributeValue;

use crate::hash::PayloadHash;
use crate::protocol::{IdempotencyRecord, OwnerToken, RecordStatus, StoredFailure};
use crate::store::StoreError;
pub use lambda_support::aws::dynamodb::{Item, n, s};

/// Every attribute a record's item may hold besides its key `pk`.
pub const RECORD_ATTRIBUTES: [&str; 15] = [
    "status",
    "payload_hash",
    "owner",
    "lease_until_ms",
    "result",
    "error_code",
    "error_reason",
    "last_error",
    "attempts",
    "created_at",
    "updated_at",
    "expires_at",
    RECOVERY_SHARD,
    RECOVERY_DUE,
    "input",
];

/// The DynamoDB item for `record`: what the store writes, and what a test or tool seeds.
pub fn item_from_record(record: &IdempotencyRecord) -> Item {
    let mut item = Item::new();
    item.insert("pk".into(), s(&record.partition_key));
    item.insert("status".into(), s(record.status.as_str()));
    item.insert("payload_hash".into(), s(record.payload_hash.as_str()));
    if let Some(owner) = &record.owner {
        item.insert("owner".into(), s(owner.as_str()));
    }
    item.insert("lease_until_ms".into(), n(record.lease_until_ms));
    if let Some(result) = &record.result {
        item.insert("result".into(), s(result));
    }
    if let Some(failure) = &record.failure {
        item.insert("error_code".into(), s(&failure.code));
        item.insert("error_reason".into(), s(&failure.detail));
    }
    if let Some(last_error) = &record.last_error {
        item.insert("last_error".into(), s(last_error));
    }
    item.insert("attempts".into(), n(i64::from(record.attempts)));
    item.insert("created_at".into(), n(record.created_at_ms));
    item.insert("updated_at".into(), n(record.updated_at_ms));
    item.insert("expires_at".into(), n(record.expires_at_s));
    if let Some(due) = record.recovery_due_ms {
        item.insert(RECOVERY_SHARD.into(), s(recovery_shard(&record.partition_key)));
        item.insert(RECOVERY_DUE.into(), n(due));
    }
    if let Some(input) = &record.input {
        item.insert("input".into(), s(input));
    }
    item
}

/// The sparse index of records a completer may have to finish: only items with a recovery
/// (IN_PROGRESS, claimed with one) have its key attributes, so it holds nothing else.
pub const RECOVERY_INDEX: &str = "recovery";
/// The index's partition key: `{operation}#{shard}`.
pub const RECOVERY_SHARD: &str = "recovery_shard";
/// The index's sort key: when the recovery is due (epoch ms).
pub const RECOVERY_DUE: &str = "recovery_due";
/// Shards per operation. One index partition takes about 1,000 writes per second, and every
/// claim and settlement of a recoverable record writes the index: 16 shards keep the index far
/// from limiting the table; a completer queries all of them (16 small queries per operation).
pub const RECOVERY_SHARDS: u8 = 16;

/// The shard of a record: stable (from the SHA-256 of its partition key), so that every write of
/// one record goes to the same index partition.
pub fn recovery_shard(partition_key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(partition_key.as_bytes());
    let operation = partition_key.split('#').next().unwrap_or_default();
    format!("{operation}#{:02}", digest[0] % RECOVERY_SHARDS)
}

/// Reads a stored item back; a missing or mistyped attribute is [`StoreError::Malformed`].
pub fn record_from_item(pk: &str, item: &Item) -> Result<IdempotencyRecord, StoreError> {
    let malformed = |reason: String| StoreError::Malformed { key: pk.to_owned(), reason };
    let text = |name: &str| -> Result<Option<String>, StoreError> {
        match item.get(name) {
            None => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
            Some(_) => Err(malformed(format!("{name} is not a string"))),
        }
    };
    let number = |name: &str| -> Result<i64, StoreError> {
        match item.get(name) {
            Some(AttributeValue::N(v)) => v.parse().map_err(|_| malformed(format!("{name} is not an integer"))),
            _ => Err(malformed(format!("{name} is missing or not a number"))),
        }
    };
    let required = |name: &str| text(name)?.ok_or_else(|| malformed(format!("{name} is missing")));
    let status_text = required("status")?;
    let status = RecordStatus::parse(&status_text).ok_or_else(|| malformed(format!("unknown status {status_text}")))?;
    let failure = match (text("error_code")?, text("error_reason")?) {
        (Some(code), Some(detail)) => Some(StoredFailure { code, detail }),
        _ => None,
    };
    Ok(IdempotencyRecord {
        partition_key: pk.to_owned(),
        status,
        payload_hash: PayloadHash::from_stored(required("payload_hash")?),
        owner: text("owner")?.map(OwnerToken::from_stored),
        lease_until_ms: number("lease_until_ms")?,
        result: text("result")?,
        failure,
        last_error: text("last_error")?,
        attempts: u32::try_from(number("attempts")?).map_err(|_| malformed("attempts out of range".into()))?,
        created_at_ms: number("created_at")?,
        updated_at_ms: number("updated_at")?,
        expires_at_s: number("expires_at")?,
        recovery_due_ms: item.contains_key(RECOVERY_DUE).then(|| number(RECOVERY_DUE)).transpose()?,
        input: text("input")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_the_round_trip() {
        let record = IdempotencyRecord {
            partition_key: "process#acme#k".into(),
            status: RecordStatus::Failed,
            payload_hash: PayloadHash::from_stored("abc".into()),
            owner: Some(OwnerToken::from_stored("o-1".into())),
            lease_until_ms: 5,
            result: None,
            failure: Some(StoredFailure { code: "card_declined".into(), detail: "insufficient funds".into() }),
            last_error: Some("insufficient funds".into()),
            attempts: 3,
            created_at_ms: 1,
            updated_at_ms: 2,
            expires_at_s: 3,
            recovery_due_ms: Some(4),
            input: Some("{}".into()),
        };
        let item = item_from_record(&record);
        assert_eq!(record_from_item("process#acme#k", &item).unwrap(), record);
    }

    #[test]
    fn every_attribute_an_item_holds_is_named() {
        let record = IdempotencyRecord {
            partition_key: "process#acme#k".into(),
            status: RecordStatus::Completed,
            payload_hash: PayloadHash::from_stored("abc".into()),
            owner: Some(OwnerToken::from_stored("o-1".into())),
            lease_until_ms: 5,
            result: Some("{}".into()),
            failure: Some(StoredFailure { code: "c".into(), detail: "r".into() }),
            last_error: Some("e".into()),
            attempts: 3,
            created_at_ms: 1,
            updated_at_ms: 2,
            expires_at_s: 3,
            recovery_due_ms: Some(4),
            input: Some("{}".into()),
        };
        let item = item_from_record(&record);
        assert_eq!(item.len(), RECORD_ATTRIBUTES.len() + 1, "pk and every attribute");
        assert!(item.keys().all(|k| k == "pk" || RECORD_ATTRIBUTES.contains(&k.as_str())));
    }

    #[test]
    fn mistyped_attributes_are_malformed_not_panics() {
        let mut item = Item::new();
        item.insert("status".into(), AttributeValue::N("1".into()));
        let err = record_from_item("pk", &item).unwrap_err();
        assert!(matches!(err, StoreError::Malformed { .. }), "{err}");
    }
}
