//! The persistence port: one small interface, implemented by the DynamoDB and in-memory adapters.

use std::future::Future;

use crate::key::{Operation, RecordKey};
use crate::protocol::{ClaimRequest, IdempotencyRecord, OwnerToken, SettleRequest, StoredFailure};

/// What a claim found. A refused claim is an outcome, not an error: the caller decides what a
/// duplicate, a conflict or a key reuse means for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The caller owns the record: go ahead and do the work.
    Claimed(Lease),
    /// The work was done before: here is its stored result (JSON text); do nothing.
    AlreadyCompleted {
        /// JSON text of the stored result.
        result: String,
    },
    /// The work failed permanently before: here is why; do nothing.
    AlreadyFailed(StoredFailure),
    /// Another worker holds a live lease.
    InProgressElsewhere {
        /// When that lease ends (epoch ms).
        lease_until_ms: i64,
    },
    /// The key was used before with a different payload: a client error, never retried.
    PayloadMismatch,
}

/// Proof of a successful claim, needed to settle it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The claimed record.
    pub key: RecordKey,
    /// This claim's token.
    pub owner: OwnerToken,
    /// End of the lease (epoch ms): do not start work that cannot finish before it.
    pub lease_until_ms: i64,
    /// Which claim this is (1 for the first).
    pub attempt: u32,
    /// The record existed before this claim (a take-over of a released or lapsed claim): the
    /// operation was tried before, and may have left traces to clean up (a failure record).
    pub resumed: bool,
}

/// What a settlement (complete, fail, release) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Written: the record now holds this settlement.
    Recorded,
    /// Refused: the caller no longer owns the record (its lease lapsed and another worker took
    /// over, or it was settled already). The record as it now stands, if any.
    NotOwner {
        /// The record as found (boxed: records are large, and this is the rare path).
        current: Option<Box<IdempotencyRecord>>,
    },
}

/// Failures of the store itself. Refused conditions are never errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Throttling, timeouts, connection failures, 5xx: try again later.
    #[error("idempotency store temporarily unavailable: {0}")]
    Transient(String),
    /// Missing table, access denied, invalid request: retrying will not help.
    #[error("idempotency store rejected the request: {0}")]
    Permanent(String),
    /// A stored record that this code cannot read (a missing or mistyped attribute).
    #[error("idempotency record {key} is malformed: {reason}")]
    Malformed {
        /// The partition key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl StoreError {
    /// Whether the operation may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

/// Persistence of idempotency records. Every write is a single conditional request whose
/// condition is the rule in [`super::protocol`].
pub trait IdempotencyStore: Send + Sync {
    /// Claims the record if no live record stands in the way; otherwise says what stands there.
    fn claim(&self, request: &ClaimRequest) -> impl Future<Output = Result<ClaimOutcome, StoreError>> + Send;

    /// Completes, fails or releases the record, if the request's owner still owns it.
    fn settle(&self, request: &SettleRequest) -> impl Future<Output = Result<Settlement, StoreError>> + Send;

    /// Reads a record (strongly consistent), expired or not: for status queries and operators.
    fn get(&self, key: &RecordKey) -> impl Future<Output = Result<Option<IdempotencyRecord>, StoreError>> + Send;

    /// Up to `limit` keys of `operation`'s records whose recovery is due at `now_ms`, without
    /// reading the whole table (DynamoDB: a sparse index, the limit shared fairly by its shards). May include records that changed since
    /// (an index is eventually consistent): callers read each one back.
    fn due_for_recovery(
        &self,
        operation: &Operation,
        now_ms: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordKey>, StoreError>> + Send;

    /// Moves the record's recovery to `due_ms` (`None`: no recovery any more) if it is
    /// IN_PROGRESS and unchanged since `seen_updated_at_ms`
    /// ([`crate::protocol::may_reschedule_recovery`]). Whether it was moved.
    fn reschedule_recovery(
        &self,
        key: &RecordKey,
        seen_updated_at_ms: i64,
        due_ms: Option<i64>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Claims several records, each by exactly the rule of [`Self::claim`], as if one after
    /// another in the given order; the outcomes in that order. A store that can send the claims
    /// together overrides this (DynamoDB: up to 25 in one request); the default claims one at a
    /// time.
    fn claim_many(
        &self,
        requests: &[ClaimRequest],
    ) -> impl Future<Output = Vec<Result<ClaimOutcome, StoreError>>> + Send {
        async move {
            let mut outcomes = Vec::with_capacity(requests.len());
            for request in requests {
                outcomes.push(self.claim(request).await);
            }
            outcomes
        }
    }

    /// Settles several records, each by exactly the rule of [`Self::settle`]; the outcomes in
    /// the requests' order. Overridden like [`Self::claim_many`].
    fn settle_many(
        &self,
        requests: &[SettleRequest],
    ) -> impl Future<Output = Vec<Result<Settlement, StoreError>>> + Send {
        async move {
            let mut outcomes = Vec::with_capacity(requests.len());
            for request in requests {
                outcomes.push(self.settle(request).await);
            }
            outcomes
        }
    }
}

/// Maps what a claim refusal found to the outcome a caller sees.
pub(crate) fn refused_outcome(
    record: &IdempotencyRecord,
    refusal: crate::protocol::Refusal,
) -> Result<ClaimOutcome, StoreError> {
    use crate::protocol::Refusal;
    let malformed = |reason: &str| StoreError::Malformed { key: record.partition_key.clone(), reason: reason.into() };
    Ok(match refusal {
        Refusal::PayloadMismatch => ClaimOutcome::PayloadMismatch,
        Refusal::Completed => ClaimOutcome::AlreadyCompleted {
            result: record.result.clone().ok_or_else(|| malformed("COMPLETED without a result"))?,
        },
        Refusal::Failed => {
            ClaimOutcome::AlreadyFailed(record.failure.clone().ok_or_else(|| malformed("FAILED without an error"))?)
        }
        Refusal::InProgress { lease_until_ms } => ClaimOutcome::InProgressElsewhere { lease_until_ms },
    })
}
