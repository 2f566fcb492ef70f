//! The processor function: SQS batches of payment messages, each executed exactly once in effect.
//!
//! The handler is a plain async function over typed events ([`Processor::handle`]); `main.rs`
//! only builds the adapters from the environment and hands the handler to the runtime.

pub mod config;
mod delivery;
pub mod fate;
pub mod handler;
pub mod ports;
mod provider;
mod waits;

use std::marker::PhantomData;

use fleet_breaker::dynamodb::DynamoDbBreakerStore;
use lambda_idempotency::batching::Batching;
use lambda_idempotency::dynamodb::DynamoDbStore;
use lambda_sqs_batch::{SqsDeadLetterQueue, SqsVisibility};
use payments_core::failures::dynamodb::DynamoDbFailureStore;
use payments_core::payment::PaymentGateway;
use payments_core::payment::http_gateway::{BuildError, HttpGateway};

pub use config::ProcessorConfig;
pub use fate::PaymentFate;
pub use handler::{BatchSummary, Processor, VERSION_WAIT_RECEIVES};
pub use ports::{Adapters, Ports};
pub use provider::provider_health;

/// The deployed adapters: DynamoDB, SQS, and a provider gateway `G` (HTTP in production; tests
/// put other gateways in front of the same AWS adapters).
pub struct Aws<G>(PhantomData<G>);

impl<G: PaymentGateway + 'static> Adapters for Aws<G> {
    type Store = Batching<DynamoDbStore>;
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
        store: Batching::new(DynamoDbStore::new(dynamodb.clone(), &config.idempotency_table), config.batching),
        failures: DynamoDbFailureStore::new(dynamodb.clone(), &config.failures_table),
        gateway,
        visibility: SqsVisibility::new(sqs.clone()),
        breaker: DynamoDbBreakerStore::new(dynamodb, &config.idempotency_table),
        dead_letters: SqsDeadLetterQueue::new(sqs, &config.dead_letter_queue_url),
    };
    Processor::new(ports, config)
}
