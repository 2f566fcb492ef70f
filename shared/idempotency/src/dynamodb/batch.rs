//! Claims and settlements of many records in one request: PartiQL `BatchExecuteStatement`, up to
//! 25 statements, each its own conditional write with its own result. It is not a transaction:
//! every statement lands or fails alone, exactly as the same write sent on its own would, and a
//! refused statement returns the item it found (`ReturnValuesOnConditionCheckFailure`). So each
//! record is decided by the same rule as [`super::DynamoDbStore::claim`] and `settle`:
//!
//! - a **claim** is first tried as an `INSERT` of the fresh record ([`claimed_record`] of a
//!   `Create`), which succeeds only where no record exists — a first delivery, the common case.
//!   Every other record (it exists, its statement failed, the request's answer was lost) is read
//!   back in one `BatchGetItem` and continues by the single-record rounds from what was found:
//!   a duplicate is answered from the read, a lapsed lease is taken over, our own claim whose
//!   answer was lost is recognised.
//! - a **settlement** is an `UPDATE` whose `WHERE` is the settlement's condition (owner and
//!   status); a refusal is read from the returned item as the single path reads it, and a
//!   statement that failed otherwise, or a request whose answer was lost, is settled again alone.
//!
//! A record key appears at most once per request (DynamoDB refuses a batch that names one item
//! twice): a second request for the same record in one call runs after the first, alone.

use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::types::{
    AttributeValue, BatchStatementErrorCodeEnum, BatchStatementRequest, BatchStatementResponse, KeysAndAttributes,
    ReturnValuesOnConditionCheckFailure,
};
use futures::future::join_all;

use super::attributes::{item_from_record, n, record_from_item, s};
use super::{ClaimRound, DynamoDbStore, claimed, store_error};
use crate::protocol::{
    ClaimDecision, ClaimRequest, IdempotencyRecord, RecordStatus, Settle, SettleRequest, claimed_record,
    is_own_settlement,
};
use crate::store::{ClaimOutcome, IdempotencyStore, Settlement, StoreError};

/// The most statements DynamoDB takes in one `BatchExecuteStatement`.
pub const MAX_STATEMENTS: usize = 25;

/// The most keys DynamoDB takes in one `BatchGetItem`.
const MAX_READS: usize = 100;

/// What one statement of a batch came to.
enum Landed {
    /// Written.
    Written,
    /// Its condition refused it; the item it found, if it asked and one existed.
    Refused(Option<Box<IdempotencyRecord>>),
    /// Not known to be written or refused: a statement error (throttled, a duplicate insert, an
    /// internal error) or a request whose answer never came.
    Unknown,
}

impl DynamoDbStore {
    /// [`IdempotencyStore::claim_many`], batched: see the module's documentation.
    pub(super) async fn claim_batch(&self, requests: &[ClaimRequest]) -> Vec<Result<ClaimOutcome, StoreError>> {
        let (firsts, repeats) = first_of_each_key(requests.iter().map(|r| r.key.partition_key()));
        let mut outcomes: Vec<Option<Result<ClaimOutcome, StoreError>>> = requests.iter().map(|_| None).collect();
        let mut unknown = Vec::new();
        for chunk in firsts.chunks(MAX_STATEMENTS) {
            let statements = chunk.iter().map(|&i| insert_claim(&self.table, &requests[i])).collect();
            let pks: Vec<String> = chunk.iter().map(|&i| requests[i].key.partition_key()).collect();
            for (&i, landed) in chunk.iter().zip(self.execute(statements, &pks).await) {
                match landed {
                    Landed::Written => outcomes[i] = Some(Ok(claimed(&requests[i], 1, false))),
                    Landed::Refused(_) | Landed::Unknown => unknown.push(i),
                }
            }
        }
        let found = self.read_many(unknown.iter().map(|&i| requests[i].key.partition_key()).collect()).await;
        let continued = join_all(unknown.iter().map(|&i| {
            let request = &requests[i];
            let pk = request.key.partition_key();
            let first = found.as_ref().ok().map(|found| ClaimRound::Refused(found.get(&pk).cloned()));
            async move {
                match first {
                    Some(first) => self.verified_claim(request, self.claim_after(request, &pk, first).await).await,
                    None => self.claim(request).await,
                }
            }
        }))
        .await;
        for (&i, outcome) in unknown.iter().zip(continued) {
            outcomes[i] = Some(outcome);
        }
        for i in repeats {
            outcomes[i] = Some(self.claim(&requests[i]).await);
        }
        outcomes.into_iter().map(|o| o.expect("every request is decided")).collect()
    }

    /// [`IdempotencyStore::settle_many`], batched: see the module's documentation.
    pub(super) async fn settle_batch(&self, requests: &[SettleRequest]) -> Vec<Result<Settlement, StoreError>> {
        let (firsts, repeats) = first_of_each_key(requests.iter().map(|r| r.key.partition_key()));
        let mut outcomes: Vec<Option<Result<Settlement, StoreError>>> = requests.iter().map(|_| None).collect();
        let mut again = Vec::new();
        for chunk in firsts.chunks(MAX_STATEMENTS) {
            let statements = chunk.iter().map(|&i| update_settle(&self.table, &requests[i])).collect();
            let pks: Vec<String> = chunk.iter().map(|&i| requests[i].key.partition_key()).collect();
            for (&i, landed) in chunk.iter().zip(self.execute(statements, &pks).await) {
                let request = &requests[i];
                outcomes[i] = match landed {
                    Landed::Written => Some(Ok(Settlement::Recorded)),
                    // As the single path reads a refusal: our own write whose answer was lost, or
                    // another owner's record.
                    Landed::Refused(current) if is_own_settlement(current.as_deref(), request) => {
                        Some(Ok(Settlement::Recorded))
                    }
                    Landed::Refused(current) => Some(Ok(Settlement::NotOwner { current })),
                    Landed::Unknown => {
                        again.push(i);
                        None
                    }
                };
            }
        }
        let settled_again = join_all(again.iter().map(|&i| self.settle(&requests[i]))).await;
        for (&i, outcome) in again.iter().zip(settled_again) {
            outcomes[i] = Some(outcome);
        }
        for i in repeats {
            outcomes[i] = Some(self.settle(&requests[i]).await);
        }
        outcomes.into_iter().map(|o| o.expect("every request is decided")).collect()
    }

    /// Sends `statements` (for the records `pks`, in order) in one request; what each came to.
    async fn execute(&self, statements: Vec<BatchStatementRequest>, pks: &[String]) -> Vec<Landed> {
        let answer = self.client.batch_execute_statement().set_statements(Some(statements)).send().await;
        let Ok(answer) = answer else { return pks.iter().map(|_| Landed::Unknown).collect() };
        let responses = answer.responses();
        pks.iter().enumerate().map(|(i, pk)| landed(responses.get(i), pk)).collect()
    }

    /// The records at `pks` (strongly consistent), absent ones left out; one request per 100.
    async fn read_many(&self, pks: Vec<String>) -> Result<HashMap<String, IdempotencyRecord>, StoreError> {
        let mut found = HashMap::new();
        for chunk in pks.chunks(MAX_READS) {
            let mut keys: Vec<HashMap<String, AttributeValue>> =
                chunk.iter().map(|pk| HashMap::from([("pk".to_owned(), s(pk))])).collect();
            // Keys DynamoDB left unprocessed (throttled) are asked for again, a few times.
            for _ in 0..3 {
                if keys.is_empty() {
                    break;
                }
                let wanted = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut keys)))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| StoreError::Permanent(e.to_string()))?;
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, wanted)
                    .send()
                    .await
                    .map_err(|e| store_error(&e))?;
                for item in out.responses().and_then(|r| r.get(&self.table)).into_iter().flatten() {
                    let pk = item.get("pk").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                    found.insert(pk.clone(), record_from_item(&pk, item)?);
                }
                keys = out
                    .unprocessed_keys()
                    .and_then(|u| u.get(&self.table))
                    .map(|k| k.keys().to_vec())
                    .unwrap_or_default();
            }
            if !keys.is_empty() {
                return Err(StoreError::Transient("BatchGetItem left keys unprocessed".into()));
            }
        }
        Ok(found)
    }
}

/// The indexes of the first request for each record, and of the others (in order).
fn first_of_each_key(pks: impl Iterator<Item = String>) -> (Vec<usize>, Vec<usize>) {
    let mut seen = HashSet::new();
    let (mut firsts, mut repeats) = (Vec::new(), Vec::new());
    for (i, pk) in pks.enumerate() {
        if seen.insert(pk) { firsts.push(i) } else { repeats.push(i) }
    }
    (firsts, repeats)
}

/// What a statement's response says; a missing response (a short answer) is unknown.
fn landed(response: Option<&BatchStatementResponse>, pk: &str) -> Landed {
    let Some(response) = response else { return Landed::Unknown };
    let Some(error) = response.error() else { return Landed::Written };
    match error.code() {
        Some(BatchStatementErrorCodeEnum::ConditionalCheckFailed) => {
            match error.item().map(|item| record_from_item(pk, item).map(Box::new)).transpose() {
                Ok(found) => Landed::Refused(found),
                // An item this code cannot read: let the single path report it.
                Err(_) => Landed::Unknown,
            }
        }
        _ => Landed::Unknown,
    }
}

/// The claim of a record that does not exist: an `INSERT` of the fresh record, which DynamoDB
/// refuses (`DuplicateItem`) where any record exists.
fn insert_claim(table: &str, request: &ClaimRequest) -> BatchStatementRequest {
    let fresh = claimed_record(None, ClaimDecision::Create, request);
    let mut item: Vec<(String, AttributeValue)> = item_from_record(&fresh).into_iter().collect();
    item.sort_by(|a, b| a.0.cmp(&b.0));
    let fields: Vec<String> = item.iter().map(|(name, _)| format!("'{name}': ?")).collect();
    BatchStatementRequest::builder()
        .statement(format!("INSERT INTO \"{table}\" VALUE {{{}}}", fields.join(", ")))
        .set_parameters(Some(item.into_iter().map(|(_, value)| value).collect()))
        .build()
        .expect("a statement is set")
}

/// A settlement: an `UPDATE` of what it writes, where the record is ours and in progress.
fn update_settle(table: &str, request: &SettleRequest) -> BatchStatementRequest {
    let (now, expires) = (n(request.now_ms), n(request.expires_at_s));
    let (set, remove): (Vec<(&str, AttributeValue)>, &[&str]) = match &request.settle {
        Settle::Complete { result } => (
            vec![
                ("\"status\" = ?", s(RecordStatus::Completed.as_str())),
                ("\"result\" = ?", s(result)),
                ("updated_at = ?", now),
                ("expires_at = ?", expires),
            ],
            &["recovery_shard", "recovery_due"],
        ),
        Settle::Fail(failure) => (
            vec![
                ("\"status\" = ?", s(RecordStatus::Failed.as_str())),
                ("error_code = ?", s(&failure.code)),
                ("error_reason = ?", s(&failure.detail)),
                ("last_error = ?", s(&failure.detail)),
                ("updated_at = ?", now),
                ("expires_at = ?", expires),
            ],
            &["recovery_shard", "recovery_due"],
        ),
        Settle::Release { reason, refund } => {
            let mut set = vec![("lease_until_ms = ?", n(0)), ("last_error = ?", s(reason)), ("updated_at = ?", now)];
            if *refund {
                set.push(("attempts = attempts - ?", n(1)));
            }
            (set, &["\"owner\""])
        }
    };
    let clauses: Vec<String> = set
        .iter()
        .map(|(clause, _)| format!("SET {clause}"))
        .chain(remove.iter().map(|name| format!("REMOVE {name}")))
        .collect();
    let mut parameters: Vec<AttributeValue> = set.into_iter().map(|(_, value)| value).collect();
    parameters.extend([
        s(request.key.partition_key()),
        s(request.owner.as_str()),
        s(RecordStatus::InProgress.as_str()),
    ]);
    BatchStatementRequest::builder()
        .statement(format!(
            "UPDATE \"{table}\" {} WHERE pk = ? AND \"owner\" = ? AND \"status\" = ?",
            clauses.join(" ")
        ))
        .set_parameters(Some(parameters))
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .build()
        .expect("a statement is set")
}
