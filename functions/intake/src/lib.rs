//! The intake function: accepts payments at once (202, with a status URL), enqueues each exactly
//! once per Idempotency-Key, and answers status queries.

pub mod config;
pub mod handler;
pub mod identity;
pub mod problem;

use lambda_idempotency::dynamodb::DynamoDbStore;
use payments_core::failures::dynamodb::DynamoDbFailureStore;
use payments_core::payment::queue::SqsPaymentQueue;

pub use config::IntakeConfig;
pub use handler::Intake;

/// The intake as deployed: DynamoDB and SQS.
pub type AwsIntake = Intake<DynamoDbStore, DynamoDbFailureStore, SqsPaymentQueue>;

/// Builds the deployed intake from its configuration and the AWS SDK configuration.
pub fn build(config: IntakeConfig, sdk: &aws_config::SdkConfig) -> AwsIntake {
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    Intake::new(
        DynamoDbStore::new(dynamodb.clone(), &config.idempotency_table),
        DynamoDbFailureStore::new(dynamodb, &config.failures_table),
        SqsPaymentQueue::new(aws_sdk_sqs::Client::new(sdk), &config.queue_url),
        config,
    )
}
