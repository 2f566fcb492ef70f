//! The payment domain: money, the request, the queued message, and the payment provider port.

pub mod card_data;
pub mod envelope;
pub mod gateway;
pub mod http_gateway;
pub mod money;
pub mod request;

pub use envelope::{EnvelopeError, KeyHint, PaymentMessage};
pub use gateway::{Charge, ChargeRequest, GatewayError, PaymentGateway, RetryableKind};
pub use money::{Currency, MinorUnits};
pub use request::{MerchantReference, Metadata, PaymentMethodToken, PaymentRequest};
