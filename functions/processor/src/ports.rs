//! The adapters a processor runs on, named by one type so that the bounds are written once: the
//! deployed set ([`crate::Aws`]) and the in-memory sets of the tests.

use fleet_breaker::BreakerStore;
use lambda_idempotency::IdempotencyStore;
use lambda_sqs_batch::{DeadLetterQueue, VisibilityControl};
use payments_core::failures::FailureStore;
use payments_core::payment::PaymentGateway;

/// One type naming every adapter the processor needs.
pub trait Adapters: 'static {
    /// Idempotency records.
    type Store: IdempotencyStore;
    /// Failure records of poison messages.
    type Failures: FailureStore;
    /// The payment provider.
    type Gateway: PaymentGateway;
    /// Hiding messages for their backoff.
    type Visibility: VisibilityControl;
    /// The circuit breaker's shared state.
    type Breaker: BreakerStore;
    /// Where given-up payments go.
    type DeadLetters: DeadLetterQueue;
}

/// The adapter instances a processor is built from.
pub struct Ports<A: Adapters> {
    /// Idempotency records of operation `process`.
    pub store: A::Store,
    /// Failure records of poison messages.
    pub failures: A::Failures,
    /// The payment provider.
    pub gateway: A::Gateway,
    /// Visibility changes.
    pub visibility: A::Visibility,
    /// The breaker's shared state.
    pub breaker: A::Breaker,
    /// The dead-letter queue.
    pub dead_letters: A::DeadLetters,
}
