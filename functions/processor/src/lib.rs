//! The processor function: SQS batches of payment messages, each executed exactly once in effect.
//!
//! The handler is a plain async function over typed events ([`Processor::handle`]); `main.rs`
//! only builds the adapters from the environment and hands the handler to the runtime.

pub mod config;
pub mod handler;

use std::marker::PhantomData;

use payments_core::breaker::dynamodb::DynamoDbBreakerStore;
use payments_core::failures::dynamodb::DynamoDbFailureStore;
use payments_core::idempotency::dynamodb::DynamoDbStore;
use payments_core::payment::PaymentGateway;
use payments_core::payment::http_gateway::{BuildError, HttpGateway};
use payments_core::sqs::{SqsDeadLetterQueue, SqsVisibility};

pub use config::ProcessorConfig;
pub use handler::{Adapters, BatchSummary, Handled, Ports, Processor, VERSION_WAIT_RECEIVES, provider_health};

/// The deployed adapters: DynamoDB, SQS, and a provider gateway `G` (HTTP in production; tests
/// put other gateways in front of the same AWS adapters).
pub struct Aws<G>(PhantomData<G>);

impl<G: PaymentGateway + 'static> Adapters for Aws<G> {
    type Store = DynamoDbStore;
    type Failures = DynamoDbFailureStore;
    type Gateway = G;
    type Visibility = SqsVisibility;
    type Breaker = DynamoDbBreakerStore;
    type DeadLetters = SqsDeadLetterQueue;
}

/// The processor as deployed.
pub type AwsProcessor = Processor<Aws<HttpGateway>>;

/// Builds the deployed processor from its configuration and the AWS SDK configuration.
pub fn build(config: &ProcessorConfig, sdk: &aws_config::SdkConfig) -> Result<AwsProcessor, BuildError> {
    Ok(build_with_clients(
        config,
        aws_sdk_dynamodb::Client::new(sdk),
        aws_sdk_sqs::Client::new(sdk),
        HttpGateway::deployed(&config.provider, &config.provider_key, sdk)?,
    ))
}

/// The same, over clients and a gateway the caller configured (interceptors, endpoints, another
/// provider): the benchmark counts DynamoDB requests this way, and tests script the provider.
pub fn build_with_clients<G: PaymentGateway + 'static>(
    config: &ProcessorConfig,
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    gateway: G,
) -> Processor<Aws<G>> {
    let ports = Ports {
        store: DynamoDbStore::new(dynamodb.clone(), &config.idempotency_table),
        failures: DynamoDbFailureStore::new(dynamodb.clone(), &config.failures_table),
        gateway,
        visibility: SqsVisibility::new(sqs.clone()),
        breaker: DynamoDbBreakerStore::new(dynamodb, &config.idempotency_table),
        dead_letters: SqsDeadLetterQueue::new(sqs, &config.dead_letter_queue_url),
    };
    Processor::new(ports, config)
}
