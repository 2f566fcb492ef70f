//! The receipt consumer end to end through the SQS-batch skeleton: in memory, and against
//! DynamoDB in LocalStack (a table of its own, created and deleted here).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::sqs::SqsMessage;
use lambda_idempotency::dynamodb::DynamoDbStore;
use lambda_idempotency::memory::InMemoryStore;
use lambda_idempotency::{Idempotency, IdempotencyConfig, IdempotencyStore, RecordStatus};
use lambda_sqs_batch::visibility::RecordingVisibility;
use lambda_sqs_batch::{Backoff, BatchConfig, MetricsSink, SqsFunction};
use receipt_email::{MailError, Mailer, Receipt, ReceiptSender, Sent};

/// A mail service that records what it sent and answers as scripted per address.
#[derive(Clone, Default)]
struct ScriptedMailer {
    sent: Arc<Mutex<Vec<String>>>,
}

impl Mailer for ScriptedMailer {
    async fn send(&self, receipt: &Receipt, idempotency_key: &str) -> Result<String, MailError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        match receipt.to.as_str() {
            "nobody@bounce.example" => Err(MailError::Bounced("550 no such mailbox".into())),
            "later@down.example" => Err(MailError::Unavailable("421 try again later".into())),
            _ => {
                self.sent.lock().unwrap().push(idempotency_key.to_owned());
                Ok(format!("msg-{}", receipt.order_id))
            }
        }
    }
}

fn message(id: &str, order: &str, to: &str) -> SqsMessage {
    let body = serde_json::json!({"shop": "shop-1", "order_id": order, "to": to, "total": "EUR 12.50"}).to_string();
    raw(id, &body)
}

fn raw(id: &str, body: &str) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.into());
    m.receipt_handle = Some(format!("rh-{id}"));
    m.body = Some(body.into());
    m.event_source_arn = Some("arn:aws:sqs:us-east-1:000000000000:receipts".into());
    m.attributes.insert("ApproximateReceiveCount".into(), "1".into());
    m
}

fn function() -> SqsFunction<RecordingVisibility> {
    SqsFunction::new(
        BatchConfig::default(),
        RecordingVisibility::default(),
        MetricsSink::new("Receipts", "receipt-email"),
    )
}

fn sender<S: IdempotencyStore>(store: S, mailer: ScriptedMailer) -> ReceiptSender<S, ScriptedMailer> {
    let backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(60)).unwrap();
    ReceiptSender::new(Idempotency::new(store, IdempotencyConfig::default()), mailer, backoff)
}

fn deadline() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap()
        + 60_000
}

/// Every path a message can take, in one batch and a redelivery: the receipt delivered four
/// times (twice in each batch) is sent once; a bounce is stored and not retried; an outage keeps
/// its message for a retry; a body that is not a receipt, or that reuses an order id with other
/// content, is dropped with a reason.
async fn every_path<S: IdempotencyStore>(store: S) {
    let mailer = ScriptedMailer::default();
    let handler = sender(store, mailer.clone());
    let function = function();
    let batch = [
        message("m1", "o-1", "ann@shop.example"),
        message("m2", "o-1", "ann@shop.example"),
        message("m3", "o-2", "nobody@bounce.example"),
        message("m4", "o-3", "later@down.example"),
        raw("m5", r#"{"shop": "shop-1", "order_id": "o-4", "card": "4242424242424242"}"#),
    ];
    let report = function.process_batch(&batch, deadline(), "req-1", &handler).await;

    let fates: std::collections::HashMap<_, _> = report.handled.iter().cloned().collect();
    let sent_now = ["m1", "m2"].iter().filter(|id| matches!(fates[**id], Sent::Now(_))).count();
    assert_eq!(sent_now, 1, "one of the two copies sends, the other finds it sent or in progress: {fates:?}");
    assert!(matches!(fates["m3"], Sent::Bounced(_)), "{:?}", fates["m3"]);
    assert!(matches!(fates["m4"], Sent::Later(_)), "{:?}", fates["m4"]);
    assert!(
        matches!(&fates["m5"], Sent::Refused(why) if !why.contains("4242")),
        "no card data echoed: {:?}",
        fates["m5"]
    );
    let failed: Vec<_> = report.response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
    assert!(failed.contains(&"m4"), "the outage's message comes back: {failed:?}");
    assert!(!failed.iter().any(|id| ["m3", "m5"].contains(id)), "bounces and bad bodies are not retried: {failed:?}");
    assert!(function.runner().visibility().calls().iter().any(|(_, handle, _)| handle == "rh-m4"), "backoff set");

    // The receipt and the bounce delivered again, and the order's id reused for another receipt.
    let again = [
        message("m1", "o-1", "ann@shop.example"),
        message("m2", "o-1", "ann@shop.example"),
        message("m3", "o-2", "nobody@bounce.example"),
        message("m6", "o-1", "someone-else@shop.example"),
    ];
    let report = function.process_batch(&again, deadline(), "req-2", &handler).await;
    assert_eq!(report.handled.len(), 4);
    for (id, fate) in &report.handled {
        match id.as_str() {
            "m3" => assert!(matches!(fate, Sent::Bounced(_)), "{fate:?}"),
            "m6" => assert!(matches!(fate, Sent::Refused(_)), "{fate:?}"),
            _ => assert_eq!(*fate, Sent::Before("msg-o-1".into())),
        }
    }
    assert_eq!(mailer.sent.lock().unwrap().len(), 1, "o-1 sent exactly once");
    let key = lambda_idempotency::RecordKey::parse("send-receipt", "shop-1", "o-2").unwrap();
    let bounced = handler.idempotency().get(&key).await.unwrap().expect("the bounce is stored");
    assert_eq!(bounced.status, RecordStatus::Failed);
}

#[tokio::test]
async fn each_receipt_is_sent_once_in_memory() {
    every_path(InMemoryStore::new()).await;
}

#[tokio::test]
async fn each_receipt_is_sent_once_with_dynamodb() {
    assert!(
        std::env::var("AWS_ENDPOINT_URL").is_ok(),
        "AWS_ENDPOINT_URL must point at LocalStack (./dev test sets it)"
    );
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&aws);
    let table = format!("receipts-{}", uuid::Uuid::new_v4());
    create_table(&dynamodb, &table).await;
    every_path(DynamoDbStore::new(dynamodb.clone(), &table)).await;
    dynamodb.delete_table().table_name(&table).send().await.unwrap();
}

/// The table the example's template would create: a string key `pk`, on demand.
async fn create_table(dynamodb: &aws_sdk_dynamodb::Client, table: &str) {
    use aws_sdk_dynamodb::client::Waiters;
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    dynamodb
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name("pk").attribute_type(ScalarAttributeType::S).build().unwrap(),
        )
        .key_schema(KeySchemaElement::builder().attribute_name("pk").key_type(KeyType::Hash).build().unwrap())
        .send()
        .await
        .unwrap();
    dynamodb.wait_until_table_exists().table_name(table).wait(Duration::from_secs(30)).await.unwrap();
}
