//! Helpers for tests that run the processor against LocalStack and the provider simulator: a
//! processor wired to a stack, a driver that plays the event source mapping, and payment
//! messages.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::Message;
use lambda_idempotency::{IdempotencyKey, Scope};
use lambda_sqs_batch::Jitter;
use lambda_support::env::Env;
use localenv::event_source;
use localenv::stack::Stack;
use payments_core::payment::{PaymentGateway, PaymentMessage};
use processor::{Aws, BatchSummary, Processor, ProcessorConfig, build_with_clients};
use provider_simulator::LedgerSnapshot;

/// The processor as the tests run it: real DynamoDB and SQS, any gateway.
pub type TestProcessor<G> = Processor<Aws<G>>;

/// An environment of `base` variables with `overrides` on top, as configuration reads it.
fn env_of(base: &[(&str, &str)], overrides: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
    let vars: HashMap<String, String> =
        base.iter().chain(overrides).map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Env::from_lookup(move |name| vars.get(name).cloned())
}

/// Processor settings for tests: a short provider timeout (0.8 s), retries within 1–2 s.
pub fn test_config(stack: &Stack, provider_url: &str, overrides: &[(&str, &str)]) -> ProcessorConfig {
    let base = [
        ("IDEMPOTENCY_TABLE", stack.idempotency_table()),
        ("FAILURES_TABLE", stack.failures_table()),
        ("PROVIDER_BASE_URL", provider_url),
        ("PROVIDER_ALLOW_HTTP", "true"),
        ("DEAD_LETTER_QUEUE_URL", stack.dlq_url()),
        ("PROVIDER_TIMEOUT_MS", "800"),
        ("PROVIDER_CONNECT_TIMEOUT_MS", "300"),
        ("LEASE_MARGIN_MS", "200"),
        ("IDEMPOTENCY_MAX_LEASE_SECONDS", "60"),
        ("BACKOFF_BASE_MS", "1000"),
        ("BACKOFF_CAP_SECONDS", "2"),
        ("METRICS_NAMESPACE", "PaymentsPipelineTest"),
    ];
    ProcessorConfig::from_env(&env_of(&base, overrides)).expect("valid test configuration")
}

/// A processor over `stack` with `gateway` and a seeded jitter.
pub fn processor<G: PaymentGateway + 'static>(
    config: &ProcessorConfig,
    sdk: &aws_config::SdkConfig,
    gateway: G,
    seed: u64,
) -> TestProcessor<G> {
    build_with_clients(config, aws_sdk_dynamodb::Client::new(sdk), aws_sdk_sqs::Client::new(sdk), gateway)
        .with_jitter(Jitter::seeded(seed))
}

/// One round of the event source mapping: receive up to 10 messages (long-polling up to
/// `wait_s`), run them through the processor with `deadline_in` left, delete the successes.
pub async fn drive_once<G: PaymentGateway + 'static>(
    processor: &TestProcessor<G>,
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    queue_arn: &str,
    wait_s: i32,
    deadline_in: Duration,
) -> (Vec<Message>, BatchSummary) {
    let received = event_source::receive(sqs, queue_url, 10, wait_s).await.expect("receive");
    if received.is_empty() {
        return (received, BatchSummary::default());
    }
    let records: Vec<_> = received.iter().map(|m| event_source::lambda_record(m, queue_arn)).collect();
    let deadline_ms = lambda_support::clock::epoch_ms(std::time::SystemTime::now()) + deadline_in.as_millis() as i64;
    let summary = processor.process_batch(&records, deadline_ms, "test").await;
    event_source::delete_handled(sqs, queue_url, &received, &summary.response)
        .await
        .expect("delete the handled messages");
    (received, summary)
}

/// Drives until the queue holds nothing (visible or in flight), or `timeout` passes; returns
/// every summary.
pub async fn drive_until_empty<G: PaymentGateway + 'static>(
    processor: &TestProcessor<G>,
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    queue_arn: &str,
    timeout: Duration,
) -> Vec<BatchSummary> {
    let started = Instant::now();
    let mut summaries = Vec::new();
    while started.elapsed() < timeout {
        let (received, summary) = drive_once(processor, sqs, queue_url, queue_arn, 1, Duration::from_secs(10)).await;
        if !received.is_empty() {
            summaries.push(summary);
        } else if queue_depth(sqs, queue_url).await == 0 {
            return summaries;
        }
    }
    panic!("queue {queue_url} not empty after {timeout:?}");
}

/// Messages visible plus in flight.
pub async fn queue_depth(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> u64 {
    event_source::queue_depth(sqs, queue_url).await.expect("queue depth")
}

/// A valid payment message.
pub fn payment(scope: &Scope, key: &str, amount: u64, metadata: serde_json::Value) -> PaymentMessage {
    let body = serde_json::json!({
        "schema_version": 1,
        "idempotency_key": key,
        "scope": scope,
        "payment": {
            "amount": amount, "currency": "EUR", "payment_method": "pm_card_visa",
            "merchant_reference": format!("order-{key}"), "metadata": metadata
        },
        "created_at": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "correlation_id": format!("corr-{key}")
    });
    PaymentMessage::parse(&body.to_string()).expect("valid payment message")
}

/// Sends raw bodies to a queue.
pub async fn send(sqs: &aws_sdk_sqs::Client, queue_url: &str, bodies: &[String]) {
    for body in bodies {
        sqs.send_message().queue_url(queue_url).message_body(body).send().await.expect("SendMessage");
    }
}

/// The simulator's ledger.
pub async fn ledger(base_url: &str) -> LedgerSnapshot {
    reqwest::get(format!("{base_url}/ledger")).await.expect("ledger").json().await.expect("ledger JSON")
}

/// The provider key the processor uses for (scope, key).
pub fn provider_key(scope: &Scope, key: &str) -> String {
    payments_core::payment::provider_idempotency_key(scope, &IdempotencyKey::new(key).expect("valid key"))
}

/// The intake as the tests run it: real DynamoDB and SQS over `stack`, the local scope header
/// allowed, and overrides of any setting.
pub fn intake(
    stack: &Stack,
    sdk: &aws_config::SdkConfig,
    overrides: &[(&str, &str)],
) -> intake::Intake<
    lambda_idempotency::dynamodb::DynamoDbStore,
    payments_core::failures::dynamodb::DynamoDbFailureStore,
    payments_core::payment::queue::SqsPaymentQueue,
> {
    let base = [
        ("IDEMPOTENCY_TABLE", stack.idempotency_table()),
        ("FAILURES_TABLE", stack.failures_table()),
        ("PAYMENTS_QUEUE_URL", stack.queue_url()),
        ("MAX_AMOUNT_MINOR", "1000000"),
        ("ALLOW_SCOPE_HEADER", "true"),
        ("METRICS_NAMESPACE", "PaymentsPipelineTest"),
    ];
    let config = intake::IntakeConfig::from_env(&env_of(&base, overrides)).expect("valid intake configuration");
    intake::build(config, sdk)
}

/// The DLQ consumer as the tests run it, over `stack`.
pub fn dlq_consumer(stack: &Stack, sdk: &aws_config::SdkConfig, provider_url: &str) -> dlq_consumer::AwsDlqConsumer {
    let base = [
        ("IDEMPOTENCY_TABLE", stack.idempotency_table()),
        ("FAILURES_TABLE", stack.failures_table()),
        ("SOURCE_QUEUE_URL", stack.queue_url()),
        ("METRICS_NAMESPACE", "PaymentsPipelineTest"),
        ("PROVIDER_BASE_URL", provider_url),
        ("PROVIDER_ALLOW_HTTP", "true"),
        ("PROVIDER_TIMEOUT_MS", "800"),
        ("PROVIDER_CONNECT_TIMEOUT_MS", "300"),
        // As deployed: the key from the stack's secret.
        ("PROVIDER_API_KEY_SECRET", stack.provider_key_secret()),
    ];
    let config = dlq_consumer::DlqConsumerConfig::from_env(&env_of(&base, &[])).expect("valid config");
    dlq_consumer::build(&config, sdk).expect("provider client")
}

/// The operator's redrive tool over `stack`, as `ops redrive` builds it (the API key from the
/// stack's secret), asking the provider at `provider_url`.
pub fn redriver(stack: &Stack, sdk: &aws_config::SdkConfig, provider_url: &str) -> localenv::operator::StackRedriver {
    let provider = localenv::operator::provider(sdk, stack, Some(provider_url)).expect("provider client");
    localenv::operator::redriver(sdk, stack, provider, Duration::from_secs(24 * 3600))
}

/// The completer as the tests run it, over `stack`, on `clock` (ahead of real time to make
/// records due without waiting).
pub fn completer(
    stack: &Stack,
    sdk: &aws_config::SdkConfig,
    clock: std::sync::Arc<dyn lambda_support::clock::Clock>,
) -> completer::AwsCompleter {
    let base = [
        ("IDEMPOTENCY_TABLE", stack.idempotency_table()),
        ("FAILURES_TABLE", stack.failures_table()),
        ("PAYMENTS_QUEUE_URL", stack.queue_url()),
        ("METRICS_NAMESPACE", "PaymentsPipelineTest"),
    ];
    let config = completer::CompleterConfig::from_env(&env_of(&base, &[])).expect("valid config");
    completer::build_with_clock(&config, sdk, clock)
}
