//! The dead-letter queue consumer: makes every payment that exhausted its retries visible and
//! actionable (a failure record, a log event, metrics) instead of silently lost.

pub mod config;
pub mod handler;

use std::sync::Arc;

use payments_core::clock::SystemClock;
use payments_core::failures::dynamodb::DynamoDbFailureStore;
use payments_core::idempotency::Idempotency;
use payments_core::idempotency::dynamodb::DynamoDbStore;
use payments_core::observability::MetricsSink;
use payments_core::payment::OutcomeResolver;
use payments_core::payment::http_gateway::{BuildError, HttpGateway};
use payments_core::sqs::{BatchRunner, Jitter, SqsVisibility};

pub use config::DlqConsumerConfig;
pub use handler::{DeadLetterOutcome, DlqConsumer};

/// The consumer as deployed.
pub type AwsDlqConsumer = DlqConsumer<DynamoDbStore, DynamoDbFailureStore, SqsVisibility, HttpGateway>;

/// Builds the deployed consumer.
pub fn build(config: &DlqConsumerConfig, sdk: &aws_config::SdkConfig) -> Result<AwsDlqConsumer, BuildError> {
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    Ok(DlqConsumer {
        resolver: OutcomeResolver::new(
            Idempotency::new(DynamoDbStore::new(dynamodb.clone(), &config.idempotency_table), config.idempotency()),
            HttpGateway::deployed(&config.provider, &config.provider_key, sdk)?,
        ),
        failures: DynamoDbFailureStore::new(dynamodb, &config.failures_table),
        runner: BatchRunner::new(config.batch, SqsVisibility::new(aws_sdk_sqs::Client::new(sdk))),
        backoff: config.backoff,
        jitter: Jitter::from_os(),
        metrics: MetricsSink::new(&config.metrics_namespace, "dlq-consumer"),
        clock: Arc::new(SystemClock),
        source_queue: config.source_queue.clone(),
    })
}
