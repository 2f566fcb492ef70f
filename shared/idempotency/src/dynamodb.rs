//! The DynamoDB adapter. Every write is one conditional request whose condition mirrors
//! [`super::protocol`]; a refused condition returns the stored item (ALL_OLD), so a duplicate
//! costs one request and no extra read.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use crate::key::{Operation, RecordKey};
use crate::protocol::{
    ClaimDecision, ClaimRequest, IdempotencyRecord, RecordStatus, Settle, SettleRequest, decide_claim, is_own_claim,
    is_own_settlement, now_s,
};
use crate::store::{ClaimOutcome, IdempotencyStore, Lease, Settlement, StoreError, refused_outcome};
use lambda_support::aws::dynamodb::{ConditionalWrite, refused};
use lambda_support::aws::errors::sort_error;

pub mod attributes;
mod batch;

use attributes::{
    RECOVERY_DUE, RECOVERY_INDEX, RECOVERY_SHARD, RECOVERY_SHARDS, n, record_from_item, recovery_shard, s,
};

/// The claim's condition: absent, or IN_PROGRESS with the lease over for the same payload and
/// not past TTL (a record past TTL is replaced by a fresh one, see `replace_expired`).
const CLAIM_CONDITION: &str = "attribute_not_exists(pk) OR (#status = :in_progress AND lease_until_ms < :now_ms \
     AND payload_hash = :hash AND expires_at >= :now_s)";

/// Creates afresh, or takes over keeping history (attempts, first-claim time, last error).
const CLAIM_UPDATE: &str = "SET #status = :in_progress, #owner = :owner, lease_until_ms = :lease, \
     payload_hash = :hash, updated_at = :now_ms, expires_at = :expires_at, \
     attempts = if_not_exists(attempts, :zero) + :one, created_at = if_not_exists(created_at, :now_ms) \
     REMOVE #result, error_code, error_reason";

/// Replacing a record that is past its TTL but not yet deleted by DynamoDB.
const REPLACE_CONDITION: &str = "attribute_not_exists(pk) OR expires_at < :now_s";

/// What a claim asking for recovery adds to [`CLAIM_UPDATE`]'s SET clause.
const CLAIM_RECOVERY: &str = ", recovery_shard = :shard, recovery_due = :due";

/// Only the owner of an IN_PROGRESS record may settle it.
const SETTLE_CONDITION: &str = "#owner = :owner AND #status = :in_progress";

/// A completer's rescheduling: only of an IN_PROGRESS record unchanged since it was read.
const RESCHEDULE_CONDITION: &str = "updated_at = :seen AND #status = :in_progress";

/// A claim loses a race at most this many times before reporting the store as busy.
const MAX_CLAIM_ROUNDS: usize = 4;

/// Idempotency records in one DynamoDB table with a string partition key `pk` and TTL on
/// `expires_at`.
#[derive(Debug, Clone)]
pub struct DynamoDbStore {
    client: Client,
    table: String,
}

impl DynamoDbStore {
    /// A store over `table`, using `client` as configured (endpoint, retries, credentials).
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    /// The table this store writes (operators' tools name it in their output).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// IN_PROGRESS records of `operation` whose lease ended before `lease_ended_before_ms`: for
    /// the intake, payments accepted but possibly never enqueued (a crash between claim and
    /// SendMessage). An operator's query: it scans the table.
    pub async fn stale_in_progress(
        &self,
        operation: &str,
        lease_ended_before_ms: i64,
    ) -> Result<Vec<IdempotencyRecord>, StoreError> {
        let records = self.records_of(operation).await?;
        Ok(records
            .into_iter()
            .filter(|r| r.status == RecordStatus::InProgress && r.lease_until_ms < lease_ended_before_ms)
            .collect())
    }

    /// Every record of `operation` (strongly consistent). An operator's or a reconciliation's
    /// query: it scans the table.
    pub async fn records_of(&self, operation: &str) -> Result<Vec<IdempotencyRecord>, StoreError> {
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .filter_expression("begins_with(pk, :prefix)")
                .expression_attribute_values(":prefix", s(format!("{operation}#")))
                .send()
                .await
                .map_err(|e| store_error(&e))?;
            for item in out.items() {
                let pk = item.get("pk").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                found.push(record_from_item(&pk, item)?);
            }
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(found),
            }
        }
    }

    /// One conditional claim: claimed, or the record that stood in the way.
    async fn try_claim(&self, request: &ClaimRequest, pk: &str) -> Result<ClaimRound, StoreError> {
        let (set_recovery, set_input) = match &request.recovery {
            None => ("", ""),
            Some(recovery) => (CLAIM_RECOVERY, if recovery.input.is_some() { ", #input = :input" } else { "" }),
        };
        let (set, remove) = CLAIM_UPDATE.split_once(" REMOVE ").expect("the claim update removes settled fields");
        let mut update = self.client.update_item();
        if !set_input.is_empty() {
            update = update.expression_attribute_names("#input", "input");
        }
        let result = update
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression(format!("{set}{set_recovery}{set_input} REMOVE {remove}"))
            .condition_expression(CLAIM_CONDITION)
            .set_expression_attribute_values(recovery_values(request, pk))
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#result", "result")
            .expression_attribute_values(":in_progress", s(RecordStatus::InProgress.as_str()))
            .expression_attribute_values(":owner", s(request.owner.as_str()))
            .expression_attribute_values(":lease", n(request.lease_until_ms))
            .expression_attribute_values(":hash", s(request.payload_hash.as_str()))
            .expression_attribute_values(":now_ms", n(request.now_ms))
            .expression_attribute_values(":now_s", n(now_s(request.now_ms)))
            .expression_attribute_values(":expires_at", n(request.expires_at_s))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                let number = |name: &str| -> Option<i64> {
                    out.attributes().and_then(|a| a.get(name)).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
                };
                let attempts = number("attempts").and_then(|n| u32::try_from(n).ok()).unwrap_or(1);
                // `created_at` is kept on a take-over: an older one means the record existed.
                let resumed = number("created_at").is_some_and(|created| created != request.now_ms);
                Ok(ClaimRound::Claimed(claimed(request, attempts, resumed)))
            }
            Err(err) => Ok(ClaimRound::Refused(refused_record(pk, &err)?)),
        }
    }

    /// Replaces a record that is past its TTL with a fresh claim (attempt 1, no history): one
    /// `UpdateItem` that sets every attribute of the fresh record and removes every other, so
    /// the functions need no `PutItem` on the table (only the breaker's writer does).
    async fn replace_expired(&self, request: &ClaimRequest, pk: &str) -> Result<ClaimRound, StoreError> {
        let fresh = crate::protocol::claimed_record(None, ClaimDecision::Create, request);
        let item = attributes::item_from_record(&fresh);
        let mut update = self.client.update_item().table_name(&self.table).key("pk", s(pk));
        let (mut set, mut remove) = (Vec::new(), Vec::new());
        for (i, name) in attributes::RECORD_ATTRIBUTES.iter().enumerate() {
            update = update.expression_attribute_names(format!("#a{i}"), *name);
            match item.get(*name) {
                Some(value) => {
                    set.push(format!("#a{i} = :a{i}"));
                    update = update.expression_attribute_values(format!(":a{i}"), value.clone());
                }
                None => remove.push(format!("#a{i}")),
            }
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let result = update
            .update_expression(expression)
            .condition_expression(REPLACE_CONDITION)
            .expression_attribute_values(":now_s", n(now_s(request.now_ms)))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(ClaimRound::Claimed(claimed(request, 1, false))),
            Err(err) => Ok(ClaimRound::Refused(refused_record(pk, &err)?)),
        }
    }
}

/// What one conditional claim request came to.
enum ClaimRound {
    /// The claim is ours.
    Claimed(ClaimOutcome),
    /// The condition failed on this record (`None`: it vanished meanwhile).
    Refused(Option<IdempotencyRecord>),
}

/// The record a refused conditional write found at `pk`; any other failure is a store error.
fn refused_record<E: ConditionalWrite>(pk: &str, err: &SdkResult<E>) -> Result<Option<IdempotencyRecord>, StoreError> {
    match refused(err) {
        Some(found) => found.map(|item| record_from_item(pk, item)).transpose(),
        None => Err(store_error(err)),
    }
}

/// An SDK error of a DynamoDB operation.
type SdkResult<E> = SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>;

/// The values of [`CLAIM_RECOVERY`] and the input, when the claim asks for recovery.
fn recovery_values(request: &ClaimRequest, pk: &str) -> Option<HashMap<String, AttributeValue>> {
    let recovery = request.recovery.as_ref()?;
    let mut values =
        HashMap::from([(":shard".to_owned(), s(recovery_shard(pk))), (":due".to_owned(), n(recovery.due_ms))]);
    if let Some(input) = &recovery.input {
        values.insert(":input".to_owned(), s(input));
    }
    Some(values)
}

fn claimed(request: &ClaimRequest, attempt: u32, resumed: bool) -> ClaimOutcome {
    ClaimOutcome::Claimed(Lease {
        key: request.key.clone(),
        owner: request.owner.clone(),
        lease_until_ms: request.lease_until_ms,
        attempt,
        resumed,
    })
}

/// What each settlement writes: completed or failed for good (the recovery schedule removed, the
/// TTL set), or released (the lease ended, the attempt given back on a refund).
fn settle_update(update: UpdateItemFluentBuilder, settle: &Settle, expires_at_s: i64) -> UpdateItemFluentBuilder {
    match settle {
        Settle::Complete { result } => update
            .update_expression(
                "SET #status = :completed, #result = :result, updated_at = :now_ms, expires_at = :exp \
                 REMOVE recovery_shard, recovery_due",
            )
            .expression_attribute_names("#result", "result")
            .expression_attribute_values(":completed", s(RecordStatus::Completed.as_str()))
            .expression_attribute_values(":result", s(result))
            .expression_attribute_values(":exp", n(expires_at_s)),
        Settle::Fail(failure) => update
            .update_expression(
                "SET #status = :failed, error_code = :code, error_reason = :reason, last_error = :reason, \
                 updated_at = :now_ms, expires_at = :exp REMOVE recovery_shard, recovery_due",
            )
            .expression_attribute_values(":failed", s(RecordStatus::Failed.as_str()))
            .expression_attribute_values(":code", s(&failure.code))
            .expression_attribute_values(":reason", s(&failure.detail))
            .expression_attribute_values(":exp", n(expires_at_s)),
        Settle::Release { reason, refund } => {
            let refunded = if *refund { ", attempts = attempts - :one" } else { "" };
            let update = update
                .update_expression(format!(
                    "SET lease_until_ms = :zero, last_error = :reason, updated_at = :now_ms{refunded} REMOVE #owner"
                ))
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":reason", s(reason));
            if *refund { update.expression_attribute_values(":one", n(1)) } else { update }
        }
    }
}

#[cfg(any(test, feature = "conformance"))]
impl DynamoDbStore {
    /// Writes `record` as it is, with no condition: the conformance kit's seed.
    pub(crate) async fn put_unconditionally(&self, record: &IdempotencyRecord) {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(attributes::item_from_record(record)))
            .send()
            .await
            .expect("the seed is written");
    }
}

fn store_error<E>(err: &SdkResult<E>) -> StoreError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    sort_error(err, StoreError::Transient, StoreError::Permanent)
}

impl DynamoDbStore {
    /// The claim: one conditional write, and more rounds only past a TTL or on a lost race.
    async fn claim_in_rounds(&self, request: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let pk = request.key.partition_key();
        // The common paths (first claim, take-over, duplicate) finish in the first round with one
        // request. Only a record past its TTL, or a race with another claimer, needs more.
        let first = self.try_claim(request, &pk).await?;
        self.claim_after(request, &pk, first).await
    }

    /// Continues a claim from what its last conditional write (or a read) found: our own claim
    /// whose answer was lost, a refusal, or another round.
    async fn claim_after(
        &self,
        request: &ClaimRequest,
        pk: &str,
        mut attempt: ClaimRound,
    ) -> Result<ClaimOutcome, StoreError> {
        for _ in 0..MAX_CLAIM_ROUNDS {
            let found = match attempt {
                ClaimRound::Claimed(outcome) => return Ok(outcome),
                ClaimRound::Refused(found) => found,
            };
            if let Some(own) = found.as_ref().filter(|r| is_own_claim(Some(r), request)) {
                // Our claim committed and its answer was lost: the SDK's retry met our own lease.
                let resumed = own.created_at_ms != request.now_ms;
                return Ok(claimed(request, own.attempts, resumed));
            }
            attempt = match decide_claim(found.as_ref(), &request.payload_hash, request.now_ms) {
                ClaimDecision::Refuse(refusal) => {
                    return refused_outcome(found.as_ref().expect("refusals need a record"), refusal);
                }
                ClaimDecision::Create if found.is_some() => self.replace_expired(request, pk).await?,
                // The record changed between our condition check and now: ask again.
                ClaimDecision::Create | ClaimDecision::TakeOver => self.try_claim(request, pk).await?,
            };
        }
        Err(StoreError::Transient(format!("claim of {pk} kept losing races")))
    }

    /// A claim whose every answer was lost (the SDK's retries exhausted by faults after the
    /// write committed) is checked with one strongly consistent read before it is reported as
    /// failed: a claim that landed is the caller's.
    async fn verified_claim(
        &self,
        request: &ClaimRequest,
        outcome: Result<ClaimOutcome, StoreError>,
    ) -> Result<ClaimOutcome, StoreError> {
        match outcome {
            Err(error) if error.is_retryable() => match self.get(&request.key).await {
                Ok(Some(own)) if is_own_claim(Some(&own), request) => {
                    Ok(claimed(request, own.attempts, own.created_at_ms != request.now_ms))
                }
                _ => Err(error),
            },
            outcome => outcome,
        }
    }

    /// The settlement: one conditional write.
    async fn settle_once(&self, request: &SettleRequest) -> Result<Settlement, StoreError> {
        let pk = request.key.partition_key();
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .condition_expression(SETTLE_CONDITION)
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":in_progress", s(RecordStatus::InProgress.as_str()))
            .expression_attribute_values(":owner", s(request.owner.as_str()))
            .expression_attribute_values(":now_ms", n(request.now_ms))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        match settle_update(update, &request.settle, request.expires_at_s).send().await {
            Ok(_) => Ok(Settlement::Recorded),
            Err(err) => {
                let current = refused_record(&pk, &err)?;
                if is_own_settlement(current.as_ref(), request) {
                    // Committed, and the answer lost: the SDK's retry met our own write.
                    return Ok(Settlement::Recorded);
                }
                Ok(Settlement::NotOwner { current: current.map(Box::new) })
            }
        }
    }
}

impl IdempotencyStore for DynamoDbStore {
    /// A claim whose every answer was lost is checked with one strongly consistent read before it
    /// is reported failed.
    async fn claim(&self, request: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        self.verified_claim(request, self.claim_in_rounds(request).await).await
    }

    /// One PartiQL `BatchExecuteStatement` for up to 25 claims where there are several, then one
    /// `BatchGetItem` for the records it did not create; one claim alone goes the single-record
    /// way.
    async fn claim_many(&self, requests: &[ClaimRequest]) -> Vec<Result<ClaimOutcome, StoreError>> {
        match requests {
            [one] => vec![self.claim(one).await],
            _ => self.claim_batch(requests).await,
        }
    }

    /// Likewise for settlements.
    async fn settle_many(&self, requests: &[SettleRequest]) -> Vec<Result<Settlement, StoreError>> {
        match requests {
            [one] => vec![self.settle(one).await],
            _ => self.settle_batch(requests).await,
        }
    }

    /// Likewise, a settlement whose every answer was lost is checked with one read.
    async fn settle(&self, request: &SettleRequest) -> Result<Settlement, StoreError> {
        match self.settle_once(request).await {
            Err(error) if error.is_retryable() => match self.get(&request.key).await {
                Ok(current) if is_own_settlement(current.as_ref(), request) => Ok(Settlement::Recorded),
                _ => Err(error),
            },
            outcome => outcome,
        }
    }

    async fn get(&self, key: &RecordKey) -> Result<Option<IdempotencyRecord>, StoreError> {
        let pk = key.partition_key();
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        out.item().map(|item| record_from_item(&pk, item)).transpose()
    }

    async fn due_for_recovery(
        &self,
        operation: &Operation,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<RecordKey>, StoreError> {
        // Every shard gets its share of the limit, so a busy shard never starves the others.
        let per_shard = limit.div_ceil(usize::from(RECOVERY_SHARDS));
        let mut due = Vec::new();
        for shard in 0..RECOVERY_SHARDS {
            let mut start = None;
            let shard_limit = (due.len() + per_shard).min(limit);
            while due.len() < shard_limit {
                let out = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(RECOVERY_INDEX)
                    .key_condition_expression("#shard = :shard AND #due <= :now_ms")
                    .expression_attribute_names("#shard", RECOVERY_SHARD)
                    .expression_attribute_names("#due", RECOVERY_DUE)
                    .expression_attribute_values(":shard", s(format!("{}#{shard:02}", operation.as_str())))
                    .expression_attribute_values(":now_ms", n(now_ms))
                    .limit(i32::try_from(shard_limit - due.len()).unwrap_or(i32::MAX))
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(|e| store_error(&e))?;
                for item in out.items() {
                    let pk = item.get("pk").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                    let key = RecordKey::from_partition_key(&pk)
                        .map_err(|e| StoreError::Malformed { key: pk.clone(), reason: e.to_string() })?;
                    due.push(key);
                }
                match out.last_evaluated_key() {
                    Some(key) if !key.is_empty() => start = Some(key.clone()),
                    _ => break,
                }
            }
        }
        Ok(due)
    }

    async fn reschedule_recovery(
        &self,
        key: &RecordKey,
        seen_updated_at_ms: i64,
        due_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        let pk = key.partition_key();
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .condition_expression(RESCHEDULE_CONDITION)
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":seen", n(seen_updated_at_ms))
            .expression_attribute_values(":in_progress", s(RecordStatus::InProgress.as_str()));
        update = match due_ms {
            None => update.update_expression("REMOVE recovery_shard, recovery_due"),
            Some(due) => update
                .update_expression("SET recovery_shard = :shard, recovery_due = :due")
                .expression_attribute_values(":shard", s(recovery_shard(&pk)))
                .expression_attribute_values(":due", n(due)),
        };
        match update.send().await {
            Ok(_) => Ok(true),
            Err(err) if refused(&err).is_some() => Ok(false),
            Err(err) => Err(store_error(&err)),
        }
    }
}

pub use lambda_support::aws::dynamodb::Item;
