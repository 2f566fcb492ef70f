//! Unknown outcomes against LocalStack and the simulator: a payment whose attempts all time out
//! after the provider charged is resolved by a lookup (SUCCEEDED, one charge), never given up;
//! a charged payment that reaches the DLQ anyway is completed by the DLQ consumer and its
//! failure record closed.

use std::time::{Duration, Instant};

use dlq_consumer::DeadLetterFate;
use integration_tests::http::{get_payment, parts, payment_body, post_payment};
use integration_tests::pipeline::{
    dlq_consumer, drive_once, drive_until_empty, intake, ledger, processor, queue_depth, test_config,
};
use integration_tests::{aws, own_stack, unique_scope};
use lambda_idempotency::IdempotencyKey;
use lambda_support::clock::{Clock, SystemClock};
use localenv::event_source::{delete_handled, lambda_record, receive};
use payments_core::failures::{FailureState, FailureStore};
use payments_core::payment::http_gateway::HttpGateway;
use processor::PaymentFate;
use provider_simulator::{SimConfig, Simulator};
use serde_json::json;

/// Charged on the first attempt, whose answer is lost; every later attempt times out.
fn charged_then_silent() -> serde_json::Value {
    json!({"simulate": "commit_then_timeout,timeout,timeout,timeout,timeout,timeout"})
}

#[tokio::test]
async fn timeouts_on_every_attempt_after_a_charge_end_succeeded_by_lookup_with_one_charge() {
    let sdk = aws().await;
    let stack = own_stack(&sdk, &[("MaxReceiveCount", "50")]).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sim = Simulator::start(SimConfig { commit_delay_ms: 1_500, ..SimConfig::default() }).await.unwrap();
    let api = intake(&stack, &sdk, &[]);
    let overrides = [("MAX_PROVIDER_ATTEMPTS", "3"), ("BACKOFF_CAP_SECONDS", "1"), ("BREAKER_FAILURE_THRESHOLD", "10")];
    let config = test_config(&stack, &sim.base_url(), &overrides);
    let p = processor(&config, &sdk, HttpGateway::new(&config.provider).unwrap(), 5);
    let scope = unique_scope("unknown");
    let mut body = payment_body(900);
    body["metadata"] = charged_then_silent();
    assert_eq!(parts(&api.handle(post_payment(scope.as_str(), "u-1", &body)).await.unwrap()).0, 202);

    let summaries = drive_until_empty(&p, &sqs, stack.queue_url(), stack.queue_arn(), Duration::from_secs(60)).await;
    let handled: Vec<PaymentFate> = summaries.into_iter().flat_map(|s| s.handled.into_iter().map(|(_, h)| h)).collect();
    assert!(
        handled[..handled.len() - 1]
            .iter()
            .all(|h| matches!(h, PaymentFate::Retry { reason, .. } if reason == "provider_timeout")),
        "{handled:?}"
    );
    assert!(matches!(handled.last(), Some(PaymentFate::Charged { .. })), "resolved by lookup: {handled:?}");
    let ledger = ledger(&sim.base_url()).await;
    assert_eq!(ledger.charges.len(), 1);
    assert_eq!(ledger.requests, 3, "three attempts, no fourth charge request");
    assert!(ledger.lookups >= 1);
    let (_, view) = parts(&api.handle(get_payment(scope.as_str(), "u-1")).await.unwrap());
    assert_eq!(
        (view["status"].as_str(), view["charge"]["charge_id"].as_str()),
        (Some("SUCCEEDED"), Some(ledger.charges[0].id.as_str()))
    );
    assert_eq!(queue_depth(&sqs, stack.dlq_url()).await, 0, "never dead-lettered");
}

#[tokio::test]
async fn a_charged_payment_that_reaches_the_dlq_is_completed_by_the_consumer_and_its_record_closed() {
    let sdk = aws().await;
    // SQS gives up after two deliveries, long before the processor's budget of ten.
    let stack = own_stack(&sdk, &[("MaxReceiveCount", "2")]).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sim = Simulator::start(SimConfig { commit_delay_ms: 1_500, ..SimConfig::default() }).await.unwrap();
    let api = intake(&stack, &sdk, &[]);
    let overrides = [("MAX_PROVIDER_ATTEMPTS", "10"), ("BACKOFF_BASE_MS", "1000"), ("BACKOFF_CAP_SECONDS", "1")];
    let config = test_config(&stack, &sim.base_url(), &overrides);
    let p = processor(&config, &sdk, HttpGateway::new(&config.provider).unwrap(), 6);
    let consumer = dlq_consumer(&stack, &sdk, &sim.base_url());
    let scope = unique_scope("dlq-charged");
    let mut body = payment_body(1200);
    body["metadata"] = charged_then_silent();
    assert_eq!(parts(&api.handle(post_payment(scope.as_str(), "c-1", &body)).await.unwrap()).0, 202);
    let started = Instant::now();
    while queue_depth(&sqs, stack.queue_url()).await > 0 {
        drive_once(&p, &sqs, stack.queue_url(), stack.queue_arn(), 1, Duration::from_secs(10)).await;
        assert!(started.elapsed() < Duration::from_secs(30), "never reached the DLQ");
    }
    let (_, view) = parts(&api.handle(get_payment(scope.as_str(), "c-1")).await.unwrap());
    assert_eq!(view["status"], "PROCESSING", "in the DLQ, not yet recorded: {view}");

    let dead = receive(&sqs, stack.dlq_url(), 10, 2).await.unwrap();
    assert_eq!(dead.len(), 1);
    let records: Vec<_> = dead.iter().map(|m| lambda_record(m, stack.dlq_arn())).collect();
    let answer = consumer.process_batch(&records, SystemClock.now_ms() + 10_000, "r1").await;
    assert!(answer.response.batch_item_failures.is_empty());
    delete_handled(&sqs, stack.dlq_url(), &dead, &answer.response).await.unwrap();

    let failures = consumer.failures().for_payment(&scope, &IdempotencyKey::new("c-1").unwrap()).await.unwrap();
    assert_eq!(failures.len(), 1);
    let ledger = ledger(&sim.base_url()).await;
    assert_eq!(ledger.charges.len(), 1);
    let FailureState::Closed { note, .. } = &failures[0].state else { panic!("{:?}", failures[0]) };
    assert!(note.starts_with("resolved: charged") && note.contains(&ledger.charges[0].id), "{note}");
    let (_, view) = parts(&api.handle(get_payment(scope.as_str(), "c-1")).await.unwrap());
    assert_eq!(view["status"], "SUCCEEDED", "{view}");
}

#[tokio::test]
async fn an_unreachable_provider_keeps_a_dead_message_unrecorded_and_retried() {
    let sdk = aws().await;
    let stack = own_stack(&sdk, &[]).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    // Nothing listens on port 9: every lookup fails to connect.
    let consumer = dlq_consumer(&stack, &sdk, "http://127.0.0.1:9");
    let scope = unique_scope("dlq-unknown");
    let message = integration_tests::pipeline::payment(&scope, "n-1", 100, json!({})).to_body();
    integration_tests::pipeline::send(&sqs, stack.dlq_url(), &[message]).await;
    let dead = receive(&sqs, stack.dlq_url(), 10, 2).await.unwrap();
    let records: Vec<_> = dead.iter().map(|m| lambda_record(m, stack.dlq_arn())).collect();
    let answer = consumer.process_batch(&records, SystemClock.now_ms() + 10_000, "r1").await;
    assert_eq!(answer.response.batch_item_failures.len(), 1, "kept for a retry");
    assert!(matches!(answer.handled[..], [(_, DeadLetterFate::NotRecorded { .. })]), "{:?}", answer.handled);
    assert!(consumer.failures().for_payment(&scope, &IdempotencyKey::new("n-1").unwrap()).await.unwrap().is_empty());
    drop(sim);
}

/// A failure record for a payment the provider did charge (its answer lost), redriven after
/// the payment's idempotency record is gone (past its retention): the redrive asks first and
/// completes the payment instead of re-sending it, so no second charge can follow even where the
/// provider has forgotten the key. With the provider unreachable and the payment older than the
/// key window, the redrive is refused.
#[tokio::test]
async fn a_late_redrive_of_a_charged_payment_completes_it_instead_of_charging_again() {
    let sdk = aws().await;
    let stack = own_stack(&sdk, &[]).await;
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let scope = unique_scope("late");
    let old = humantime::format_rfc3339_millis(std::time::SystemTime::now() - Duration::from_secs(30 * 3600));
    let mut message =
        serde_json::to_value(integration_tests::pipeline::payment(&scope, "l-1", 700, json!({}))).unwrap();
    message["created_at"] = json!(old.to_string());
    let body = message.to_string();
    let payment = payments_core::payment::PaymentMessage::parse(&body).unwrap();
    // The provider charged it (a request whose answer was lost).
    let http = HttpGateway::new(&test_config(&stack, &sim.base_url(), &[]).provider).unwrap();
    let request = payments_core::payment::ChargeRequest {
        idempotency_key: payments_core::payment::provider_idempotency_key(&payment.scope, &payment.idempotency_key),
        amount: payment.payment.amount,
        currency: payment.payment.currency,
        payment_method: payment.payment.payment_method.clone(),
        merchant_reference: payment.payment.merchant_reference.clone(),
        metadata: payment.payment.metadata.clone(),
    };
    let charge = payments_core::payment::PaymentGateway::charge(&http, &request).await.unwrap();
    // Its failure record is open; no idempotency record exists any more.
    let failures = payments_core::failures::dynamodb::DynamoDbFailureStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        stack.failures_table(),
    );
    let record = payments_core::failures::FailureRecord {
        partition: payments_core::failures::record::payment_partition(&scope, &payment.idempotency_key),
        message_id: "m-late".into(),
        scope: Some(scope.clone()),
        idempotency_key: Some(payment.idempotency_key.clone()),
        body: body.clone(),
        accepted_message: Some(body.clone()),
        receive_count: 5,
        first_attempt_at_ms: None,
        last_attempt_at_ms: None,
        last_error: Some("provider_timeout".into()),
        failure_class: "provider_timeout".into(),
        source_queue: stack.queue_arn().into(),
        recorded_at_ms: SystemClock.now_ms(),
        kind: payments_core::failures::FailureKind::DeadLetter,
        state: FailureState::Open,
        redriven: None,
    };
    failures.record(&record).await.unwrap();

    // Unreachable provider, payment older than the 24 h key window: refused, nothing sent.
    let blind = integration_tests::pipeline::redriver(&stack, &sdk, "http://127.0.0.1:9");
    let refused = blind.redrive_record(&record.partition, "m-late", false, SystemClock.now_ms()).await;
    assert!(
        matches!(refused, Err(payments_core::failures::redrive::RedriveError::OutcomeUnknown { .. })),
        "{refused:?}"
    );
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    assert_eq!(queue_depth(&sqs, stack.queue_url()).await, 0);

    // With the provider answering: found charged, completed, not re-sent.
    let ops = integration_tests::pipeline::redriver(&stack, &sdk, &sim.base_url());
    let done = ops.redrive_record(&record.partition, "m-late", false, SystemClock.now_ms()).await.unwrap();
    assert_eq!((done.found_charge.as_deref(), done.new_message_id), (Some(charge.id.as_str()), None));
    assert_eq!(queue_depth(&sqs, stack.queue_url()).await, 0, "nothing re-sent");
    assert_eq!(ledger(&sim.base_url()).await.charges.len(), 1, "no second charge");
    let records = lambda_idempotency::dynamodb::DynamoDbStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        stack.idempotency_table(),
    );
    let key = payments_core::payment::process_key(&scope, &payment.idempotency_key);
    let stored = lambda_idempotency::IdempotencyStore::get(&records, &key).await.unwrap().unwrap();
    assert_eq!(stored.status, lambda_idempotency::RecordStatus::Completed);
    assert!(stored.result.unwrap().contains(&charge.id));
    let after = failures.get(&record.partition, "m-late").await.unwrap().unwrap();
    assert!(matches!(after.state, FailureState::Closed { ref note, .. } if note.starts_with("resolved: charged")));
}
