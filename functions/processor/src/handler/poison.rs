//! Messages that are not payments this processor can execute: recorded for operators and never
//! retried, or, for a newer schema, kept until the processor that reads it is deployed.

use std::time::Duration;

use lambda_idempotency::{ClaimOutcome, PayloadHash, StoredFailure};
use payments_core::failures::{FailureKind, FailureRecord, FailureStore, stored_error};
use payments_core::payment::{EnvelopeError, KeyHint, process_key};

use super::Processor;
use crate::delivery::Delivery;
use crate::fate::PaymentFate;
use crate::ports::Adapters;

/// Deliveries a message of an unknown schema version waits for a processor that reads it.
pub const VERSION_WAIT_RECEIVES: u32 = 10;

impl<A: Adapters> Processor<A> {
    /// A message that does not parse: when its key can still be read, fail its payment record
    /// (the status then shows FAILED with the reason). Never retried, unless recording fails.
    pub(super) async fn invalid(&self, error: &EnvelopeError, delivery: &Delivery<'_>) -> PaymentFate {
        let hint = KeyHint::find(delivery.body);
        if let Some(hint) = &hint {
            let key = process_key(&hint.scope, &hint.idempotency_key);
            let hash = PayloadHash::of_bytes(delivery.body.as_bytes());
            let failed = match self.idempotency.claim(&key, &hash, delivery.deadline_ms).await {
                Ok(ClaimOutcome::Claimed(lease)) => {
                    let failure = StoredFailure { code: error.code().into(), detail: error.to_string() };
                    self.idempotency.fail_permanently(&lease, failure).await.map(|_| ())
                }
                // A valid payment owns this key, or it is settled: leave its record alone.
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = failed {
                return self.retry("failure_not_recorded", &e.to_string(), delivery.receive_count, None);
            }
        }
        self.poison(delivery, hint.as_ref(), error.code(), &error.to_string()).await
    }

    /// A message of a schema version this code does not read: during a rolling deploy the newer
    /// processor is moments away, so it waits (at least a minute per try) for up to
    /// [`VERSION_WAIT_RECEIVES`] deliveries; then it goes to the DLQ as `unsupported_schema_version`,
    /// redrivable once the deploy is done. Its payment is never marked FAILED.
    pub(super) async fn unsupported_version(&self, error: &EnvelopeError, delivery: &Delivery<'_>) -> PaymentFate {
        let detail = error.to_string();
        if delivery.receive_count < VERSION_WAIT_RECEIVES {
            return self.retry(error.code(), &detail, delivery.receive_count, Some(Duration::from_secs(60)));
        }
        // The code, not the detail, is the metric's dimension: one value, whatever the version.
        self.dead_letter(delivery, error.code(), error.code(), "not_tried").await
    }

    /// A message that is not a valid payment, or reuses a key for another one: its failure
    /// record is written, for operators, and it is never retried — unless the write fails, so
    /// that nothing is lost.
    pub(super) async fn poison(
        &self,
        delivery: &Delivery<'_>,
        hint: Option<&KeyHint>,
        code: &str,
        detail: &str,
    ) -> PaymentFate {
        let now = self.clock.now_ms();
        let record = FailureRecord {
            last_attempt_at_ms: Some(now),
            last_error: Some(stored_error(detail)),
            ..FailureRecord::open(FailureKind::Poison, delivery.failed(hint), code.to_owned(), now)
        };
        match self.failures.record(&record).await {
            Ok(_) => PaymentFate::Poison { code: code.to_owned(), detail: detail.to_owned() },
            Err(e) => self.retry("failure_not_recorded", &e.to_string(), delivery.receive_count, None),
        }
    }
}
