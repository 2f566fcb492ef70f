//! The completer: a scheduled function that finishes what was claimed and then abandoned with
//! nothing left to retry it — a payment the intake claimed but never enqueued (its invocation
//! died between the claim and `SendMessage`, and the client never retried), or a payment whose
//! processor record stayed IN_PROGRESS after its message was gone. It finds them through the
//! idempotency records' sparse recovery index, never by scanning the table.

pub mod config;
pub mod handler;

use std::sync::Arc;

use lambda_idempotency::Idempotency;
use lambda_idempotency::dynamodb::DynamoDbStore;
use lambda_support::clock::{Clock, SystemClock};
use payments_core::failures::dynamodb::DynamoDbFailureStore;
use payments_core::payment::queue::SqsPaymentQueue;

pub use config::CompleterConfig;
pub use handler::{Completer, Sweep};

/// The completer as deployed.
pub type AwsCompleter = Completer<DynamoDbStore, DynamoDbFailureStore, SqsPaymentQueue>;

/// Builds the deployed completer.
pub fn build(config: &CompleterConfig, sdk: &aws_config::SdkConfig) -> AwsCompleter {
    build_with_clock(config, sdk, Arc::new(SystemClock))
}

/// The same, on another clock (tests move time by hand to make records due).
pub fn build_with_clock(config: &CompleterConfig, sdk: &aws_config::SdkConfig, clock: Arc<dyn Clock>) -> AwsCompleter {
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    Completer::new(
        Idempotency::with_clock(
            DynamoDbStore::new(dynamodb.clone(), &config.idempotency_table),
            config.idempotency,
            clock,
        ),
        DynamoDbFailureStore::new(dynamodb, &config.failures_table),
        SqsPaymentQueue::new(aws_sdk_sqs::Client::new(sdk), &config.queue_url),
        config,
    )
}
