//! Resolving an unknown outcome: before a payment is reported dead or sent again, ask the
//! provider whether it holds the payment's charge, and if it does, record that charge on the
//! payment. Used by the DLQ consumer (before it records a dead payment) and by redrive (before it
//! re-sends one), so the rule is written once.

use super::envelope::PaymentMessage;
use super::gateway::{ChargeLookup, Lookup, PaymentGateway};
use super::status::{ChargeResult, process_key, provider_idempotency_key};
use lambda_idempotency::{ClaimOutcome, Idempotency, IdempotencyStore, PayloadHash, Settlement};

/// What the provider was found to hold for a payment that is not settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Its charge (the id), now recorded on the payment: it shows SUCCEEDED.
    Charged(String),
    /// Nothing: the payment was not charged.
    NotCharged,
    /// No answer to trust (provider unreachable, a request still in flight, no lookup offered),
    /// or the payment's record is busy: decide nothing final now.
    Unknown(String),
    /// The provider refused the API key: decide nothing, and say the key is wrong.
    KeyRefused(String),
}

impl Resolution {
    /// `charged`, `not_charged`, `unknown` or `key_refused`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Charged(_) => "charged",
            Self::NotCharged => "not_charged",
            Self::Unknown(_) => "unknown",
            Self::KeyRefused(_) => "key_refused",
        }
    }
}

/// Asks the provider, and completes the payment's `process` record with a charge it finds.
pub struct OutcomeResolver<S, G> {
    idempotency: Idempotency<S>,
    gateway: G,
}

impl<S: IdempotencyStore, G: PaymentGateway> OutcomeResolver<S, G> {
    /// Over the idempotency records and the provider.
    pub fn new(idempotency: Idempotency<S>, gateway: G) -> Self {
        Self { idempotency, gateway }
    }

    /// The idempotency guard underneath.
    pub fn idempotency(&self) -> &Idempotency<S> {
        &self.idempotency
    }

    /// Finds out what the provider holds for `payment`. A charge found is recorded by the same
    /// claim rule as any worker's (never over a live lease) and completed with the charge, so no
    /// second charge can follow.
    pub async fn resolve(&self, payment: &PaymentMessage) -> Resolution {
        let request = ChargeLookup {
            idempotency_key: provider_idempotency_key(&payment.scope, &payment.idempotency_key),
            merchant_reference: payment.payment.merchant_reference.clone(),
            amount: payment.payment.amount,
            currency: payment.payment.currency,
        };
        let charge = match self.gateway.lookup(&request).await {
            Lookup::Charged(charge) => charge,
            Lookup::NotCharged => return Resolution::NotCharged,
            Lookup::Unknown(detail) => return Resolution::Unknown(detail),
            Lookup::KeyRefused(detail) => return Resolution::KeyRefused(detail),
        };
        let key = process_key(&payment.scope, &payment.idempotency_key);
        let hash = match PayloadHash::of(&payment.payment) {
            Ok(hash) => hash,
            Err(e) => return Resolution::Unknown(e.to_string()),
        };
        let deadline = self.idempotency.now_ms() + 30_000;
        let lease = match self.idempotency.claim(&key, &hash, deadline).await {
            Ok(ClaimOutcome::Claimed(lease)) => lease,
            Ok(ClaimOutcome::AlreadyCompleted { .. }) => return Resolution::Charged(charge.id),
            Ok(other) => return Resolution::Unknown(format!("charged, but the payment record is not free: {other:?}")),
            Err(e) => return Resolution::Unknown(e.to_string()),
        };
        let result = ChargeResult { charge_id: charge.id.clone(), amount: charge.amount, currency: charge.currency };
        let stored = serde_json::to_value(&result).expect("a charge result serialises");
        match self.idempotency.complete(&lease, &stored).await {
            Ok(Settlement::Recorded) => Resolution::Charged(charge.id),
            Ok(Settlement::NotOwner { .. }) => {
                Resolution::Unknown("lost the payment record while completing it".into())
            }
            Err(e) => Resolution::Unknown(e.to_string()),
        }
    }
}
