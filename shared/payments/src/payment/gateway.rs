//! The payment provider port: what the processor needs from a provider, nothing about HTTP.

use std::future::Future;
use std::time::Duration;

use super::money::{Currency, MinorUnits};
use super::request::{MerchantReference, Metadata, PaymentMethodToken};

/// One charge to make. The idempotency key travels with it, so that a retry after a crash between
/// "charged" and "recorded" gets the first charge back instead of making a second one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// Sent as the provider's `Idempotency-Key`; unique per (scope, client key).
    pub idempotency_key: String,
    /// Amount in minor units.
    pub amount: MinorUnits,
    /// Currency.
    pub currency: Currency,
    /// The payment method token.
    pub payment_method: PaymentMethodToken,
    /// The merchant's reference, passed on as the charge description.
    pub merchant_reference: MerchantReference,
    /// Metadata passed on.
    pub metadata: Metadata,
}

/// A charge the provider made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Charge {
    /// The provider's charge id.
    pub id: String,
    /// Amount charged, minor units.
    pub amount: u64,
    /// Currency charged (upper case).
    pub currency: String,
}

/// Why a retryable failure happened: decides the metric reason and how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryableKind {
    /// No answer in time: the provider may or may not have charged; the key makes the retry safe.
    Timeout,
    /// Could not connect, or the connection broke.
    Connection,
    /// 409: a request with this key is still in flight at the provider.
    InFlight,
    /// 429, with the provider's Retry-After when it sent one.
    RateLimited {
        /// How long the provider asked us to wait.
        retry_after: Option<Duration>,
    },
    /// 5xx.
    ServerError {
        /// The status.
        status: u16,
    },
    /// A 2xx whose body is not a charge.
    InvalidResponse,
    /// The provider's API key could not be read (its store did not answer): nothing was sent,
    /// and nothing is known of the provider's health.
    CredentialsUnavailable,
}

impl RetryableKind {
    /// The least wait before the next try that the provider asked for (a 429's Retry-After).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

/// How a charge failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The card was declined (402): permanent for this payment.
    #[error("declined ({code}): {message}")]
    Declined {
        /// Provider's decline code.
        code: String,
        /// Provider's message.
        message: String,
    },
    /// Any other 4xx: the request itself is wrong; retrying will not help.
    #[error("rejected with {status} ({code}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Provider's error code.
        code: String,
        /// Provider's message.
        message: String,
    },
    /// Worth retrying later with the same idempotency key.
    #[error("retryable ({kind:?}): {detail}")]
    Retryable {
        /// What happened.
        kind: RetryableKind,
        /// Details for logs.
        detail: String,
    },
}

impl GatewayError {
    /// Stable, low-cardinality reason for metrics and stored failures.
    pub fn reason(&self) -> String {
        match self {
            Self::Declined { code, .. } => code.clone(),
            Self::Rejected { code, .. } => code.clone(),
            Self::Retryable { kind, .. } => match kind {
                RetryableKind::Timeout => "provider_timeout".into(),
                RetryableKind::Connection => "provider_connection".into(),
                RetryableKind::InFlight => "provider_in_flight".into(),
                RetryableKind::RateLimited { .. } => "provider_rate_limited".into(),
                RetryableKind::ServerError { status } => format!("provider_{status}"),
                RetryableKind::InvalidResponse => "provider_invalid_response".into(),
                RetryableKind::CredentialsUnavailable => "provider_credentials_unavailable".into(),
            },
        }
    }
}

/// What to look up: the charge made (or not) for one payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeLookup {
    /// The idempotency key the charge was sent with.
    pub idempotency_key: String,
    /// The merchant's reference: the fallback where a provider cannot search by key.
    pub merchant_reference: MerchantReference,
    /// Amount the charge must have, for the fallback to accept it.
    pub amount: MinorUnits,
    /// Currency the charge must have, for the fallback to accept it.
    pub currency: Currency,
}

impl From<&ChargeRequest> for ChargeLookup {
    fn from(request: &ChargeRequest) -> Self {
        Self {
            idempotency_key: request.idempotency_key.clone(),
            merchant_reference: request.merchant_reference.clone(),
            amount: request.amount,
            currency: request.currency,
        }
    }
}

/// What the provider knows of a payment whose last attempt may or may not have charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The provider holds this charge for it.
    Charged(Charge),
    /// The provider answered, and holds no charge for it (nor a request still in flight).
    NotCharged,
    /// No answer to trust: unreachable, failing, a request still in flight, or no way to ask.
    Unknown(String),
    /// The provider refused the API key (401, after the key store was asked again): nothing is
    /// known, and nothing will be until the key is fixed. Never read as "unknown" by a caller
    /// that would act on an unknown outcome (a redrive re-sends one inside the key window).
    KeyRefused(String),
}

impl Lookup {
    /// `charged`, `not_charged`, `unknown` or `key_refused`: for metrics, logs and failure
    /// records.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Charged(_) => "charged",
            Self::NotCharged => "not_charged",
            Self::Unknown(_) => "unknown",
            Self::KeyRefused(_) => "key_refused",
        }
    }
}

/// A payment provider that honours idempotency keys.
pub trait PaymentGateway: Send + Sync {
    /// Charges once per idempotency key: the same key returns the same charge.
    fn charge(&self, request: &ChargeRequest) -> impl Future<Output = Result<Charge, GatewayError>> + Send;

    /// Asks whether the provider holds a charge for this payment: before any payment whose
    /// outcome may be unknown (a timeout after sending) is called failed or dead-lettered. A
    /// provider that offers no way to ask answers [`Lookup::Unknown`], and such payments then
    /// stay retryable (the default).
    fn lookup(&self, request: &ChargeLookup) -> impl Future<Output = Lookup> + Send {
        let _ = request;
        async { Lookup::Unknown("this provider offers no lookup".into()) }
    }
}
