//! The payment domain: money, the request, the queued message, and the payment provider port.

pub mod acceptance;
pub mod card_data;
pub mod credentials;
pub mod envelope;
pub mod gateway;
pub mod http_gateway;
pub mod money;
pub mod queue;
pub mod request;
pub mod resolve;
pub mod status;

pub use acceptance::{acceptance, status_path};
pub use envelope::{EnvelopeError, KeyHint, PaymentMessage};
pub use gateway::{Charge, ChargeLookup, ChargeRequest, GatewayError, Lookup, PaymentGateway, RetryableKind};
pub use money::{Currency, MinorUnits};
pub use queue::{EnqueueError, PaymentQueue, RedriveGrant};
pub use request::{MerchantReference, Metadata, PaymentMethodToken, PaymentRequest};
pub use resolve::{OutcomeResolver, Resolution};
pub use status::{
    ChargeResult, PaymentStatus, PaymentView, derive_view, intake_key, process_key, provider_idempotency_key,
};
