//! Failure records: one per dead-lettered or poison message, so every payment that could not be
//! executed is visible and actionable instead of silently lost.

pub mod dynamodb;
pub mod memory;
pub mod record;
pub mod redrive;

pub use record::{
    FailedMessage, FailureKind, FailureRecord, FailureState, FailureStore, FailureStoreError, MAX_STORED_BODY_BYTES,
    MAX_STORED_ERROR_BYTES, Recorded, Redrive, failure_partition, payment_partition, stored_body, stored_error,
};

use lambda_idempotency::{IdempotencyKey, Scope};

/// Closes every open failure record of a payment that turned out to be charged after all (a
/// dead copy recorded "not charged", then another copy or a lookup completed it), so operators
/// are not told a successful payment is dead. Returns how many it closed.
pub async fn close_open_records<F: FailureStore>(
    store: &F,
    scope: &Scope,
    key: &IdempotencyKey,
    note: &str,
    now_ms: i64,
) -> Result<usize, FailureStoreError> {
    let mut closed = 0;
    for record in store.for_payment(scope, key).await? {
        if record.state == FailureState::Open
            && store.close(&record.partition, &record.message_id, note, now_ms).await?
        {
            closed += 1;
        }
    }
    Ok(closed)
}
