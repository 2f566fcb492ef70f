//! The core library shared by the payment functions.
//!
//! - [`breaker`]: a circuit breaker whose state is shared by the fleet through DynamoDB.
//! - [`idempotency`]: claim / complete / fail / release of idempotency records in DynamoDB,
//!   conditional on an owner token, with lease and TTL expiry checked in every condition.
//! - [`failures`]: one record per dead-lettered or poison message, for operators.
//! - [`payment`]: money, the payment request and queued message, the provider port and its HTTP
//!   adapter.
//! - [`sqs`]: the batch runner (bounded concurrency, FIFO groups, panic isolation, partial batch
//!   responses), jittered backoff and visibility changes.
//! - [`observability`]: JSON logs and CloudWatch EMF metrics.
//! - [`config`]: typed configuration from the environment, validated at cold start.
//! - [`clock`]: time as epoch milliseconds, replaceable in tests.
//! - [`aws`]: SDK configuration and error classification shared by the adapters.

pub mod aws;
pub mod breaker;
pub mod clock;
pub mod config;
pub mod failures;
pub mod idempotency;
pub mod observability;
pub mod pacing;
pub mod payment;
pub mod sqs;
