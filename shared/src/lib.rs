//! The core library shared by the payment functions.
//!
//! - [`idempotency`]: claim / complete / fail / release of idempotency records in DynamoDB,
//!   conditional on an owner token, with lease and TTL expiry checked in every condition.
//! - [`payment`]: money, the payment request and queued message, the provider port and its HTTP
//!   adapter.
//! - [`clock`]: time as epoch milliseconds, replaceable in tests.
//! - [`aws`]: SDK configuration and error classification shared by the adapters.

pub mod aws;
pub mod clock;
pub mod idempotency;
pub mod payment;
