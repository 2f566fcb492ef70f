//! The processor function: SQS batches of payment messages, each executed exactly once in effect.
//!
//! The handler is a plain async function over typed events ([`Processor::handle`]); `main.rs`
//! only builds the adapters from the environment and hands the handler to the runtime.

pub mod config;
pub mod handler;

use std::sync::Arc;

use payments_core::clock::SystemClock;
use payments_core::failures::dynamodb::DynamoDbFailureStore;
use payments_core::idempotency::Idempotency;
use payments_core::idempotency::dynamodb::DynamoDbStore;
use payments_core::observability::MetricsSink;
use payments_core::payment::http_gateway::{BuildError, HttpGateway};
use payments_core::sqs::{BatchRunner, Jitter, SqsVisibility};

pub use config::ProcessorConfig;
pub use handler::{BatchSummary, Handled, Processor};

/// The processor as deployed: DynamoDB, SQS and the provider over HTTP.
pub type AwsProcessor = Processor<DynamoDbStore, DynamoDbFailureStore, HttpGateway, SqsVisibility>;

/// Builds the deployed processor from its configuration and the AWS SDK configuration.
pub fn build(config: &ProcessorConfig, sdk: &aws_config::SdkConfig) -> Result<AwsProcessor, BuildError> {
    build_with_clients(config, aws_sdk_dynamodb::Client::new(sdk), aws_sdk_sqs::Client::new(sdk))
}

/// The same, over clients the caller configured (interceptors, endpoints): the benchmark counts
/// DynamoDB requests this way.
pub fn build_with_clients(
    config: &ProcessorConfig,
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
) -> Result<AwsProcessor, BuildError> {
    Ok(Processor {
        idempotency: Idempotency::new(
            DynamoDbStore::new(dynamodb.clone(), &config.idempotency_table),
            config.idempotency,
        ),
        failures: DynamoDbFailureStore::new(dynamodb, &config.failures_table),
        gateway: HttpGateway::new(&config.provider)?,
        runner: BatchRunner::new(config.batch, SqsVisibility::new(sqs)),
        backoff: config.backoff,
        jitter: Jitter::from_os(),
        metrics: MetricsSink::new(&config.metrics_namespace, "processor"),
        clock: Arc::new(SystemClock),
    })
}
