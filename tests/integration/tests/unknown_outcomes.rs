//! Unknown outcomes against LocalStack and the simulator: a payment whose attempts all time out
//! after the provider charged is resolved by a lookup (SUCCEEDED, one charge), never given up;
//! a charged payment that reaches the DLQ anyway is completed by the DLQ consumer and its
//! failure record resolved.

use std::time::{Duration, Instant};

use integration_tests::http::{get_payment, parts, payment_body, post_payment};
use integration_tests::pipeline::{
    dlq_consumer, drive_once, drive_until_empty, intake, ledger, processor, queue_depth, test_config,
};
use integration_tests::{aws, own_stack, unique_scope};
use localenv::event_source::{lambda_record, receive, settle};
use payments_core::clock::{Clock, SystemClock};
use payments_core::failures::{FailureState, FailureStore};
use payments_core::idempotency::IdempotencyKey;
use payments_core::payment::http_gateway::HttpGateway;
use processor::Handled;
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
    let handled: Vec<Handled> = summaries.into_iter().flat_map(|s| s.handled.into_iter().map(|(_, h)| h)).collect();
    assert!(
        handled[..handled.len() - 1]
            .iter()
            .all(|h| matches!(h, Handled::Retry { reason, .. } if reason == "provider_timeout")),
        "{handled:?}"
    );
    assert!(matches!(handled.last(), Some(Handled::Charged { .. })), "resolved by lookup: {handled:?}");
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
async fn a_charged_payment_that_reaches_the_dlq_is_completed_by_the_consumer_and_its_record_resolved() {
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
    assert!(answer.batch_item_failures.is_empty());
    settle(&sqs, stack.dlq_url(), &dead, &answer).await.unwrap();

    let failures = consumer.failures.for_payment(&scope, &IdempotencyKey::new("c-1").unwrap()).await.unwrap();
    assert_eq!(failures.len(), 1);
    let ledger = ledger(&sim.base_url()).await;
    assert_eq!(ledger.charges.len(), 1);
    let FailureState::Resolved { note, .. } = &failures[0].state else { panic!("{:?}", failures[0]) };
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
    assert_eq!(answer.batch_item_failures.len(), 1, "kept for a retry");
    assert!(consumer.failures.for_payment(&scope, &IdempotencyKey::new("n-1").unwrap()).await.unwrap().is_empty());
    drop(sim);
}
