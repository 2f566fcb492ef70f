//! The dead-letter queue consumer: makes every payment that exhausted its retries visible and
//! actionable (a failure record, a log event, metrics) instead of silently lost.

pub mod config;
pub mod handler;

use lambda_idempotency::Idempotency;
use lambda_idempotency::dynamodb::DynamoDbStore;
use lambda_sqs_batch::SqsVisibility;
use payments_core::failures::dynamodb::DynamoDbFailureStore;
use payments_core::payment::OutcomeResolver;
use payments_core::payment::http_gateway::{BuildError, HttpGateway};

pub use config::DlqConsumerConfig;
pub use handler::{DeadLetterFate, DlqConsumer, DlqConsumerParts};

/// The consumer as deployed.
pub type AwsDlqConsumer = DlqConsumer<DynamoDbStore, DynamoDbFailureStore, SqsVisibility, HttpGateway>;

/// Builds the deployed consumer.
pub fn build(config: &DlqConsumerConfig, sdk: &aws_config::SdkConfig) -> Result<AwsDlqConsumer, BuildError> {
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let parts = DlqConsumerParts {
        resolver: OutcomeResolver::new(
            Idempotency::new(DynamoDbStore::new(dynamodb.clone(), &config.idempotency_table), config.idempotency()),
            HttpGateway::deployed(&config.provider, &config.provider_key, sdk)?,
        ),
        failures: DynamoDbFailureStore::new(dynamodb, &config.failures_table),
        visibility: SqsVisibility::new(aws_sdk_sqs::Client::new(sdk)),
    };
    Ok(DlqConsumer::new(parts, config))
}
