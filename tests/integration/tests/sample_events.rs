//! The sample events in `events/` are real-shaped: each parses into its function's event type and
//! runs through the function's handler against LocalStack.

use std::time::Duration;

use aws_lambda_events::sqs::SqsEvent;
use integration_tests::http::parts;
use integration_tests::pipeline::{completer, dlq_consumer, intake, processor, test_config};
use integration_tests::{aws, own_stack};
use lambda_support::clock::{Clock, SystemClock};
use payments_core::payment::http_gateway::HttpGateway;
use processor::PaymentFate;
use provider_simulator::{SimConfig, Simulator};

fn sample(name: &str) -> String {
    std::fs::read_to_string(localenv::repo_root().join("events").join(name)).expect("sample event exists")
}

#[tokio::test]
async fn every_sample_event_runs_through_its_handler() {
    let sdk = aws().await;
    let stack = own_stack(&sdk, &[]).await;
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let deadline = SystemClock.now_ms() + 10_000;

    // The sample message was accepted on a fixed date: no maximum age applies to it here.
    let config = test_config(&stack, &sim.base_url(), &[("MAX_PAYMENT_AGE_SECONDS", "315360000")]);
    let p = processor(&config, &sdk, HttpGateway::new(&config.provider).unwrap(), 1);
    let event: SqsEvent = serde_json::from_str(&sample("sqs-payment.json")).unwrap();
    let summary = p.process_batch(&event.records, deadline, "sample").await;
    let handled: Vec<&PaymentFate> = summary.handled.iter().map(|(_, h)| h).collect();
    assert_eq!(handled.len(), 2);
    assert!(handled.iter().any(|h| matches!(h, PaymentFate::Charged { .. })), "{handled:?}");
    assert!(handled.iter().any(|h| matches!(h, PaymentFate::Poison { .. })), "{handled:?}");

    let api = intake(&stack, &sdk, &[]);
    let post = lambda_http::request::from_str(&sample("apigw-post-payment.json")).unwrap();
    assert_eq!(parts(&api.handle(post).await.unwrap()).0, 202);
    let get = lambda_http::request::from_str(&sample("apigw-get-payment.json")).unwrap();
    let (status, view) = parts(&api.handle(get).await.unwrap());
    assert_eq!(status, 200);
    assert_eq!(view["status"], "SUCCEEDED", "the processor already charged order-1001 above");

    let consumer = dlq_consumer(&stack, &sdk, &sim.base_url());
    let dead: SqsEvent = serde_json::from_str(&sample("sqs-dead-letter.json")).unwrap();
    let report =
        consumer.process_batch(&dead.records, deadline + Duration::from_secs(1).as_millis() as i64, "sample").await;
    assert!(report.response.batch_item_failures.is_empty(), "{:?}", report.handled);
    let records = payments_core::failures::FailureStore::list(consumer.failures(), true).await.unwrap();
    assert!(records.iter().any(|r| r.source_queue.ends_with("payments-payments") && r.receive_count == 6));

    // The scheduler's event through the Lambda handler: nothing is abandoned in this stack.
    let schedule: serde_json::Value = serde_json::from_str(&sample("scheduler-completer.json")).unwrap();
    let mut context = lambda_runtime::Context::default();
    context.deadline = u64::try_from(deadline).unwrap();
    let sweeper = completer(&stack, &sdk, std::sync::Arc::new(SystemClock));
    let sweep = sweeper.handle(lambda_runtime::LambdaEvent::new(schedule, context)).await.unwrap();
    assert_eq!((sweep.enqueued, sweep.re_enqueued, sweep.errors), (0, 0, 0), "{sweep:?}");
}
