//! The processor against LocalStack (real SQS and DynamoDB) and the provider simulator over HTTP.

use std::time::{Duration, Instant};

use integration_tests::pipeline::{
    drive_once, drive_until_empty, ledger, payment, processor, provider_key, queue_depth, send, test_config,
};
use integration_tests::{aws, own_stack, unique_scope};
use lambda_idempotency::{IdempotencyKey, RecordStatus};
use lambda_sqs_batch::{Backoff, Jitter};
use payments_core::failures::dynamodb::DynamoDbFailureStore;
use payments_core::failures::{FailureKind, FailureStore};
use payments_core::payment::http_gateway::HttpGateway;
use payments_core::payment::{Charge, ChargeRequest, GatewayError, PaymentGateway, process_key};
use processor::PaymentFate;
use provider_simulator::{SimConfig, Simulator};
use serde_json::json;

struct World {
    sdk: aws_config::SdkConfig,
    sqs: aws_sdk_sqs::Client,
    stack: localenv::stack::Stack,
    sim: Simulator,
}

async fn world(overrides: &[(&str, &str)], sim: SimConfig) -> World {
    let sdk = aws().await;
    let stack = own_stack(&sdk, overrides).await;
    World { sqs: aws_sdk_sqs::Client::new(&sdk), sim: Simulator::start(sim).await.unwrap(), sdk, stack }
}

fn http(config: &processor::ProcessorConfig) -> HttpGateway {
    HttpGateway::new(&config.provider).unwrap()
}

#[tokio::test]
async fn duplicates_in_one_batch_and_across_batches_charge_once() {
    let w = world(&[], SimConfig::default()).await;
    let config = test_config(&w.stack, &w.sim.base_url(), &[]);
    let p = processor(&config, &w.sdk, http(&config), 1);
    let scope = unique_scope("dups");
    let body = payment(&scope, "k-dup", 1500, json!({})).to_body();
    // Two copies in one batch (the intake re-sent after a crash, or SQS delivered twice).
    send(&w.sqs, w.stack.queue_url(), &[body.clone(), body.clone()]).await;
    let (received, summary) =
        drive_once(&p, &w.sqs, w.stack.queue_url(), w.stack.queue_arn(), 2, Duration::from_secs(3)).await;
    assert_eq!(received.len(), 2);
    let charged = summary.handled.iter().filter(|(_, h)| matches!(h, PaymentFate::Charged { .. })).count();
    assert_eq!(charged, 1, "{:?}", summary.handled);

    // A third copy in a later batch.
    send(&w.sqs, w.stack.queue_url(), &[body]).await;
    let summaries =
        drive_until_empty(&p, &w.sqs, w.stack.queue_url(), w.stack.queue_arn(), Duration::from_secs(30)).await;
    let later: Vec<&PaymentFate> = summaries.iter().flat_map(|s| s.handled.iter().map(|(_, h)| h)).collect();
    assert!(later.iter().all(|h| **h == PaymentFate::Duplicate), "{later:?}");
    assert_eq!(later.len(), 2, "the in-batch twin and the later copy are both suppressed");

    let ledger = ledger(&w.sim.base_url()).await;
    assert_eq!(ledger.charges.len(), 1);
    assert_eq!(ledger.charges[0].idempotency_key, provider_key(&scope, "k-dup"));
}

#[tokio::test]
async fn commit_then_timeout_followed_by_redelivery_charges_once() {
    let w = world(&[], SimConfig { commit_delay_ms: 3_000, ..SimConfig::default() }).await;
    let config = test_config(&w.stack, &w.sim.base_url(), &[]);
    let p = processor(&config, &w.sdk, http(&config), 2);
    let scope = unique_scope("commit");
    send(
        &w.sqs,
        w.stack.queue_url(),
        &[payment(&scope, "k-ct", 990, json!({"simulate": "commit_then_timeout"})).to_body()],
    )
    .await;

    let (_, first) = drive_once(&p, &w.sqs, w.stack.queue_url(), w.stack.queue_arn(), 2, Duration::from_secs(10)).await;
    assert!(
        matches!(&first.handled[0].1, PaymentFate::Retry { reason, .. } if reason == "provider_timeout"),
        "{:?}",
        first.handled
    );
    // The provider charged although we never heard back.
    assert_eq!(ledger(&w.sim.base_url()).await.charges.len(), 1);

    let summaries =
        drive_until_empty(&p, &w.sqs, w.stack.queue_url(), w.stack.queue_arn(), Duration::from_secs(30)).await;
    let charged: Vec<String> = summaries
        .iter()
        .flat_map(|s| s.handled.iter())
        .filter_map(|(_, h)| match h {
            PaymentFate::Charged { charge_id } => Some(charge_id.clone()),
            _ => None,
        })
        .collect();
    let ledger = ledger(&w.sim.base_url()).await;
    assert_eq!(ledger.charges.len(), 1, "the retry must get the first charge back, not make a second");
    assert_eq!(charged, [ledger.charges[0].id.clone()]);
    let record =
        p.idempotency().get(&process_key(&scope, &IdempotencyKey::new("k-ct").unwrap())).await.unwrap().unwrap();
    assert_eq!(record.status, RecordStatus::Completed);
    assert!(record.result.unwrap().contains(&ledger.charges[0].id));
}

#[tokio::test]
async fn a_retryable_error_hides_the_message_for_the_computed_window() {
    let w = world(&[], SimConfig::default()).await;
    let config = test_config(&w.stack, &w.sim.base_url(), &[("BACKOFF_BASE_MS", "5000"), ("BACKOFF_CAP_SECONDS", "5")]);
    // Pick a jitter seed whose first draw is at least 3 s, so the window is worth observing.
    let backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(5)).unwrap();
    let seed = (0..).find(|s| Jitter::seeded(*s).delay(&backoff, 1) >= Duration::from_secs(3)).unwrap();
    let p = processor(&config, &w.sdk, http(&config), seed);
    let scope = unique_scope("window");
    send(&w.sqs, w.stack.queue_url(), &[payment(&scope, "k-win", 100, json!({"simulate": "503"})).to_body()]).await;

    let (_, summary) =
        drive_once(&p, &w.sqs, w.stack.queue_url(), w.stack.queue_arn(), 2, Duration::from_secs(10)).await;
    let failed_at = Instant::now();
    let PaymentFate::Retry { after, reason } = &summary.handled[0].1 else { panic!("{:?}", summary.handled) };
    assert_eq!(reason, "provider_503");
    assert_eq!(*after, Jitter::seeded(seed).delay(&backoff, 1));

    // Poll once every 250 ms: the message must stay hidden for the window (the queue's own
    // visibility timeout is 180 s, so seeing it again soon proves the window was applied).
    let reappeared = loop {
        let got = localenv::event_source::receive(&w.sqs, w.stack.queue_url(), 1, 0).await.unwrap();
        if !got.is_empty() {
            break failed_at.elapsed();
        }
        assert!(failed_at.elapsed() < *after + Duration::from_secs(4), "still hidden long after {after:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(reappeared + Duration::from_millis(500) >= *after, "visible after {reappeared:?}, window {after:?}");
}

#[tokio::test]
async fn after_max_receive_count_the_message_is_in_the_dlq() {
    let w = world(&[("MaxReceiveCount", "2")], SimConfig::default()).await;
    let config = test_config(&w.stack, &w.sim.base_url(), &[("BACKOFF_BASE_MS", "1000"), ("BACKOFF_CAP_SECONDS", "1")]);
    let p = processor(&config, &w.sdk, http(&config), 4);
    let scope = unique_scope("dlq");
    let body = payment(&scope, "k-dlq", 100, json!({"simulate": "503,503,503,503"})).to_body();
    send(&w.sqs, w.stack.queue_url(), std::slice::from_ref(&body)).await;
    let started = Instant::now();
    let mut attempts = 0;
    while queue_depth(&w.sqs, w.stack.queue_url()).await > 0 {
        let (received, _) =
            drive_once(&p, &w.sqs, w.stack.queue_url(), w.stack.queue_arn(), 1, Duration::from_secs(10)).await;
        attempts += received.len();
        assert!(started.elapsed() < Duration::from_secs(30), "message never left the queue");
    }
    assert_eq!(attempts, 2, "delivered maxReceiveCount times");
    let dead = localenv::event_source::receive(&w.sqs, w.stack.dlq_url(), 10, 2).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some(body.as_str()));
    assert!(ledger(&w.sim.base_url()).await.charges.is_empty());
    let record =
        p.idempotency().get(&process_key(&scope, &IdempotencyKey::new("k-dlq").unwrap())).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.attempts, record.last_error.as_deref()),
        (RecordStatus::InProgress, 2, Some("provider_503"))
    );
}

#[tokio::test]
async fn a_poison_message_is_recorded_and_deleted() {
    let w = world(&[], SimConfig::default()).await;
    let config = test_config(&w.stack, &w.sim.base_url(), &[]);
    let p = processor(&config, &w.sdk, http(&config), 5);
    let scope = unique_scope("poison");
    let mut keyed = serde_json::to_value(payment(&scope, "k-bad", 100, json!({}))).unwrap();
    keyed["payment"]["currency"] = json!("EUX");
    send(&w.sqs, w.stack.queue_url(), &["{not json".to_owned(), keyed.to_string()]).await;

    let summaries =
        drive_until_empty(&p, &w.sqs, w.stack.queue_url(), w.stack.queue_arn(), Duration::from_secs(20)).await;
    let handled: Vec<&PaymentFate> = summaries.iter().flat_map(|s| s.handled.iter().map(|(_, h)| h)).collect();
    assert_eq!(handled.len(), 2, "each poison message is handled once and deleted: {handled:?}");
    assert!(handled.iter().all(|h| matches!(h, PaymentFate::Poison { code, .. } if code == "invalid_message")));

    // The keyed one shows FAILED under its payment; both have a failure record.
    let record =
        p.idempotency().get(&process_key(&scope, &IdempotencyKey::new("k-bad").unwrap())).await.unwrap().unwrap();
    assert_eq!(record.status, RecordStatus::Failed);
    assert!(record.failure.unwrap().detail.contains("payment.currency"));
    let failures = DynamoDbFailureStore::new(aws_sdk_dynamodb::Client::new(&w.sdk), w.stack.failures_table());
    let all = failures.list(true).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|f| f.kind == FailureKind::Poison));
    assert!(all.iter().any(|f| f.partition.starts_with("unparsed#") && f.body == "{not json"));
    assert!(ledger(&w.sim.base_url()).await.charges.is_empty());
}

/// Panics for one merchant reference, delegates everything else.
struct PanicFor<G>(G, &'static str);

impl<G: PaymentGateway> PaymentGateway for PanicFor<G> {
    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        if request.merchant_reference.as_str() == self.1 {
            panic!("gateway bug for {}", self.1);
        }
        self.0.charge(request).await
    }
}

#[tokio::test]
async fn a_panicking_record_does_not_fail_its_siblings() {
    let w = world(&[], SimConfig::default()).await;
    let config = test_config(&w.stack, &w.sim.base_url(), &[]);
    let p = processor(&config, &w.sdk, PanicFor(http(&config), "order-k-panic"), 6);
    let scope = unique_scope("panic");
    let bodies: Vec<String> =
        ["k-a", "k-panic", "k-b"].iter().map(|k| payment(&scope, k, 100, json!({})).to_body()).collect();
    send(&w.sqs, w.stack.queue_url(), &bodies).await;
    let mut received = Vec::new();
    let mut failed = Vec::new();
    while received.len() < 3 {
        let (got, summary) =
            drive_once(&p, &w.sqs, w.stack.queue_url(), w.stack.queue_arn(), 2, Duration::from_secs(10)).await;
        failed.extend(summary.response.batch_item_failures.iter().map(|f| f.item_identifier.clone()));
        received.extend(got);
    }
    let panicked = received.iter().find(|m| m.body().unwrap().contains("k-panic")).unwrap();
    assert_eq!(failed, [panicked.message_id().unwrap().to_owned()]);
    assert_eq!(ledger(&w.sim.base_url()).await.charges.len(), 2, "both siblings charged");
}

#[tokio::test]
async fn fifo_queues_keep_order_per_group_and_stop_a_group_at_its_first_failure() {
    let w = world(&[], SimConfig::default()).await;
    let config = test_config(&w.stack, &w.sim.base_url(), &[]);
    let p = processor(&config, &w.sdk, http(&config), 7);
    let name = format!("{}-orders.fifo", w.stack.name);
    let created = w
        .sqs
        .create_queue()
        .queue_name(&name)
        .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
        .attributes(aws_sdk_sqs::types::QueueAttributeName::ContentBasedDeduplication, "true")
        .send()
        .await
        .unwrap();
    let url = created.queue_url().unwrap().to_owned();
    let arn = format!("arn:aws:sqs:us-east-1:000000000000:{name}");
    let scope = unique_scope("fifo");
    let plan = [("g1", "a1", ""), ("g2", "b1", "503"), ("g1", "a2", ""), ("g2", "b2", ""), ("g1", "a3", "")];
    for (group, key, fault) in plan {
        w.sqs
            .send_message()
            .queue_url(&url)
            .message_group_id(group)
            .message_body(payment(&scope, key, 100, json!({"simulate": fault})).to_body())
            .send()
            .await
            .unwrap();
    }
    let (received, summary) = drive_once(&p, &w.sqs, &url, &arn, 2, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 5);
    let failed: Vec<String> = summary.response.batch_item_failures.iter().map(|f| f.item_identifier.clone()).collect();
    let id_of = |key: &str| {
        received
            .iter()
            .find(|m| m.body().unwrap().contains(&format!("\"{key}\"")))
            .unwrap()
            .message_id()
            .unwrap()
            .to_owned()
    };
    assert_eq!(failed, [id_of("b1"), id_of("b2")], "b2 waits behind its failed predecessor");
    let order: Vec<String> = ledger(&w.sim.base_url()).await.charges.iter().map(|c| c.description.clone()).collect();
    assert_eq!(order, ["order-a1", "order-a2", "order-a3"], "group g1 charged in order; b2 not started");
}
