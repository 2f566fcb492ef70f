use std::time::Duration;

use lambda_idempotency::dynamodb::DynamoDbStore;
use lambda_idempotency::{Idempotency, IdempotencyConfig};
use lambda_sqs_batch::{Backoff, BatchConfig, MetricsSink, SqsFunction, SqsVisibility};
use receipt_email::{LogMailer, ReceiptSender};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let table = std::env::var("IDEMPOTENCY_TABLE")?;
    let store = DynamoDbStore::new(aws_sdk_dynamodb::Client::new(&aws), table);
    let backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(900))?;
    let sender = ReceiptSender::new(Idempotency::new(store, IdempotencyConfig::default()), LogMailer, backoff);
    let visibility = SqsVisibility::new(aws_sdk_sqs::Client::new(&aws));
    SqsFunction::new(BatchConfig::default(), visibility, MetricsSink::new("Receipts", "receipt-email"))
        .run(sender)
        .await
}
