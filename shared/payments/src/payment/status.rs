//! The payment as its client sees it, derived (never stored twice) from the intake record, the
//! processor record and the failure records; and the keys that tie them together.

use sha2::{Digest, Sha256};

use crate::failures::FailureRecord;
use lambda_idempotency::{IdempotencyKey, IdempotencyRecord, Operation, RecordKey, RecordStatus, Scope};
use lambda_support::clock::rfc3339_ms;

/// The intake's operation name.
pub const INTAKE_OPERATION: &str = "intake";
/// The processor's operation name.
pub const PROCESS_OPERATION: &str = "process";

/// The intake's record of a payment.
pub fn intake_key(scope: &Scope, key: &IdempotencyKey) -> RecordKey {
    RecordKey::new(Operation::new(INTAKE_OPERATION).expect("valid operation name"), scope.clone(), key.clone())
}

/// The processor's record of a payment.
pub fn process_key(scope: &Scope, key: &IdempotencyKey) -> RecordKey {
    RecordKey::new(Operation::new(PROCESS_OPERATION).expect("valid operation name"), scope.clone(), key.clone())
}

/// The Idempotency-Key sent to the provider: unique per (scope, client key), fixed length, and
/// free of the client's raw key (64 hex characters of SHA-256 over the processor record's key).
pub fn provider_idempotency_key(scope: &Scope, key: &IdempotencyKey) -> String {
    let digest = Sha256::digest(process_key(scope, key).partition_key().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the processor stores when a payment succeeds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChargeResult {
    /// The provider's charge id.
    pub charge_id: String,
    /// Minor units charged.
    pub amount: u64,
    /// Currency charged.
    pub currency: String,
}

/// The five states a client can see, in the order a payment goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    /// Accepted and queued; no processing attempt yet.
    Received,
    /// Being processed, or waiting for a retry.
    Processing,
    /// Charged.
    Succeeded,
    /// Failed permanently (declined, invalid); never retried.
    Failed,
    /// Exhausted its retries; an operator has to look at it.
    DeadLettered,
}

/// The status document `GET /payments/{key}` returns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PaymentView {
    /// The client's idempotency key.
    pub idempotency_key: String,
    /// Where the payment is.
    pub status: PaymentStatus,
    /// When the intake accepted it (RFC 3339).
    pub accepted_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
    /// Processing attempts so far.
    pub attempts: u32,
    /// The charge, once succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub charge: Option<ChargeResult>,
    /// Why it failed (FAILED, DEAD_LETTERED) or is being retried (PROCESSING).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Derives the view. `None` when the intake never accepted the payment (404).
pub fn derive_view(
    key: &IdempotencyKey,
    intake: Option<&IdempotencyRecord>,
    process: Option<&IdempotencyRecord>,
    failures: &[FailureRecord],
) -> Option<PaymentView> {
    let intake = intake?;
    let open_failure = failures.iter().filter(|f| f.holds_the_payment()).max_by_key(|f| f.recorded_at_ms);
    let mut view = PaymentView {
        idempotency_key: key.as_str().to_owned(),
        status: PaymentStatus::Received,
        accepted_at: rfc3339_ms(intake.created_at_ms),
        updated_at: rfc3339_ms(intake.updated_at_ms),
        attempts: 0,
        charge: None,
        reason: None,
    };
    if let Some(process) = process {
        view.updated_at = rfc3339_ms(process.updated_at_ms.max(intake.updated_at_ms));
        view.attempts = process.attempts;
        view.reason = process.last_error.clone();
        view.status = match process.status {
            RecordStatus::Completed => {
                view.charge = process.result.as_deref().and_then(|r| serde_json::from_str(r).ok());
                view.reason = None;
                PaymentStatus::Succeeded
            }
            RecordStatus::Failed => {
                view.reason = process.failure.as_ref().map(|f| format!("{}: {}", f.code, f.detail));
                PaymentStatus::Failed
            }
            RecordStatus::InProgress => PaymentStatus::Processing,
        };
    }
    if let Some(failure) = open_failure
        && !matches!(view.status, PaymentStatus::Succeeded | PaymentStatus::Failed)
    {
        view.status = PaymentStatus::DeadLettered;
        view.updated_at = rfc3339_ms(failure.recorded_at_ms);
        view.reason = failure.last_error.clone().or_else(|| Some(failure.failure_class.clone()));
    }
    Some(view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failures::{FailureKind, FailureState};
    use lambda_idempotency::{OwnerToken, PayloadHash, StoredFailure};

    fn record(status: RecordStatus) -> IdempotencyRecord {
        IdempotencyRecord {
            partition_key: "x".into(),
            status,
            payload_hash: PayloadHash::from_stored("h".into()),
            owner: Some(OwnerToken::from_stored("o".into())),
            lease_until_ms: 0,
            result: Some(r#"{"charge_id":"ch_1","amount":5,"currency":"EUR"}"#.into()),
            failure: Some(StoredFailure { code: "card_declined".into(), detail: "insufficient_funds".into() }),
            last_error: Some("provider_503".into()),
            attempts: 2,
            created_at_ms: 1_000,
            updated_at_ms: 2_000,
            expires_at_s: 0,
            recovery_due_ms: None,
            input: None,
        }
    }

    fn failure(state: FailureState) -> FailureRecord {
        FailureRecord {
            partition: "p".into(),
            message_id: "m".into(),
            scope: None,
            idempotency_key: None,
            body: "{}".into(),
            accepted_message: None,
            receive_count: 5,
            first_attempt_at_ms: None,
            last_attempt_at_ms: None,
            last_error: Some("provider_503".into()),
            failure_class: "provider_503".into(),
            source_queue: "q".into(),
            recorded_at_ms: 3_000,
            kind: FailureKind::DeadLetter,
            state,
            redriven: None,
        }
    }

    fn status(process: Option<RecordStatus>, failures: &[FailureRecord]) -> Option<PaymentStatus> {
        let key = IdempotencyKey::new("k").unwrap();
        let process = process.map(record);
        derive_view(&key, Some(&record(RecordStatus::Completed)), process.as_ref(), failures).map(|v| v.status)
    }

    #[test]
    fn every_status_is_derived_from_the_records() {
        let key = IdempotencyKey::new("k").unwrap();
        assert_eq!(derive_view(&key, None, None, &[]), None, "never accepted: 404");
        assert_eq!(status(None, &[]), Some(PaymentStatus::Received));
        assert_eq!(status(Some(RecordStatus::InProgress), &[]), Some(PaymentStatus::Processing));
        assert_eq!(status(Some(RecordStatus::Completed), &[]), Some(PaymentStatus::Succeeded));
        assert_eq!(status(Some(RecordStatus::Failed), &[]), Some(PaymentStatus::Failed));
        assert_eq!(
            status(Some(RecordStatus::InProgress), &[failure(FailureState::Open)]),
            Some(PaymentStatus::DeadLettered)
        );
        let closed = failure(FailureState::Closed { at_ms: 4_000, note: "redriven".into() });
        assert_eq!(status(Some(RecordStatus::InProgress), &[closed]), Some(PaymentStatus::Processing));
        // Redriven and not settled yet: being processed again, no longer dead.
        let redriven = FailureRecord {
            redriven: Some(crate::failures::Redrive { at_ms: 4_000, message_id: "m2".into() }),
            ..failure(FailureState::Open)
        };
        assert_eq!(
            status(Some(RecordStatus::InProgress), std::slice::from_ref(&redriven)),
            Some(PaymentStatus::Processing)
        );
        // Dead-lettered again after the redrive: a new open record.
        assert_eq!(
            status(Some(RecordStatus::InProgress), &[redriven, failure(FailureState::Open)]),
            Some(PaymentStatus::DeadLettered)
        );
        // A settled payment stays settled even if a stray copy was dead-lettered.
        assert_eq!(
            status(Some(RecordStatus::Completed), &[failure(FailureState::Open)]),
            Some(PaymentStatus::Succeeded)
        );
    }

    #[test]
    fn a_succeeded_view_carries_the_charge() {
        let key = IdempotencyKey::new("k").unwrap();
        let view =
            derive_view(&key, Some(&record(RecordStatus::Completed)), Some(&record(RecordStatus::Completed)), &[])
                .unwrap();
        assert_eq!(view.charge.unwrap().charge_id, "ch_1");
        assert_eq!(view.reason, None);
    }

    #[test]
    fn provider_keys_differ_per_scope_and_have_a_fixed_length() {
        let key = IdempotencyKey::new("k").unwrap();
        let a = provider_idempotency_key(&Scope::new("a").unwrap(), &key);
        let b = provider_idempotency_key(&Scope::new("b").unwrap(), &key);
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
    }
}
