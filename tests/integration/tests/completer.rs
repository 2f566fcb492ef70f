//! The completer against LocalStack: records found through the real sparse index (no scan),
//! an acceptance that never reached the queue is enqueued and its payment charged once, and a
//! payment whose message vanished is re-enqueued and settled once. Each test deploys its own
//! stack: a sweep takes every due record of its table.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::http::{get_payment, header, parts, payment_body, post_payment};
use integration_tests::pipeline::{completer, drive_once, drive_until_empty, intake, ledger, processor, test_config};
use integration_tests::{aws, own_stack, unique_scope};
use lambda_idempotency::{IdempotencyKey, RecordStatus};
use lambda_support::clock::{Clock, ManualClock, SystemClock};
use payments_core::payment::http_gateway::HttpGateway;
use payments_core::payment::{intake_key, process_key};
use processor::PaymentFate;
use provider_simulator::{SimConfig, Simulator};
use serde_json::json;

const HOUR_MS: i64 = 3_600_000;

#[tokio::test]
async fn an_acceptance_that_never_reached_the_queue_is_enqueued_by_the_completer_and_charged_once() {
    let sdk = aws().await;
    let stack = own_stack(&sdk, &[]).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    // An intake whose SendMessage fails (a queue that does not exist): it answers 503, and its
    // record keeps the message. The client gives up and never retries.
    let missing = format!("{}-missing", stack.queue_url());
    let broken = intake(&stack, &sdk, &[("PAYMENTS_QUEUE_URL", &missing), ("RECOVERY_GRACE_SECONDS", "0")]);
    let scope = unique_scope("complete");
    let body = payment_body(4_200);
    assert_eq!(parts(&broken.handle(post_payment(scope.as_str(), "abandoned-1", &body)).await.unwrap()).0, 503);

    let clock = Arc::new(ManualClock::at(SystemClock.now_ms()));
    let sweeper = completer(&stack, &sdk, clock.clone());
    assert_eq!(sweeper.sweep(clock.now_ms() + 30_000).await, completer::Sweep::default(), "not due yet");
    clock.advance_ms(11_000); // the intake's 10 s lease, and no grace
    let sweep = sweeper.sweep(clock.now_ms() + 30_000).await;
    assert_eq!((sweep.enqueued, sweep.errors), (1, 0), "{sweep:?}");
    let key = IdempotencyKey::new("abandoned-1").unwrap();
    let record = sweeper.idempotency().get(&intake_key(&scope, &key)).await.unwrap().unwrap();
    assert_eq!(record.status, RecordStatus::Completed);
    assert_eq!(sweeper.sweep(clock.now_ms() + 30_000).await.enqueued, 0, "finished records leave the index");

    let config = test_config(&stack, &sim.base_url(), &[]);
    let p = processor(&config, &sdk, HttpGateway::new(&config.provider).unwrap(), 3);
    drive_until_empty(&p, &sqs, stack.queue_url(), stack.queue_arn(), Duration::from_secs(30)).await;
    let api = intake(&stack, &sdk, &[]);
    let (_, view) = parts(&api.handle(get_payment(scope.as_str(), "abandoned-1")).await.unwrap());
    assert_eq!(view["status"], "SUCCEEDED", "{view}");
    assert_eq!(ledger(&sim.base_url()).await.charges.len(), 1);
    // The client comes back after all: the acceptance the completer stored, replayed.
    let retry = api.handle(post_payment(scope.as_str(), "abandoned-1", &body)).await.unwrap();
    assert_eq!((parts(&retry).0, header(&retry, "idempotent-replayed")), (202, Some("true")));
    assert_eq!(parts(&retry).1["status"], "SUCCEEDED");
}

#[tokio::test]
async fn a_payment_whose_message_vanished_is_re_enqueued_and_settled_once_and_a_dead_one_is_left_alone() {
    let sdk = aws().await;
    let stack = own_stack(&sdk, &[]).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let api = intake(&stack, &sdk, &[]);
    let scope = unique_scope("vanished");
    let mut body = payment_body(700);
    body["metadata"] = json!({"simulate": "503"});
    assert_eq!(parts(&api.handle(post_payment(scope.as_str(), "lost-1", &body)).await.unwrap()).0, 202);

    // First attempt: a 503, released for a retry; then the message is lost (a purge, a bug).
    let config = test_config(&stack, &sim.base_url(), &[]);
    let p = processor(&config, &sdk, HttpGateway::new(&config.provider).unwrap(), 4);
    let (_, summary) = drive_once(&p, &sqs, stack.queue_url(), stack.queue_arn(), 2, Duration::from_secs(10)).await;
    assert!(matches!(summary.handled.as_slice(), [(_, PaymentFate::Retry { .. })]), "{:?}", summary.handled);
    sqs.purge_queue().queue_url(stack.queue_url()).send().await.unwrap();
    let key = IdempotencyKey::new("lost-1").unwrap();
    let stuck = p.idempotency().get(&process_key(&scope, &key)).await.unwrap().unwrap();
    assert_eq!((stuck.status, stuck.recovery_due_ms.is_some()), (RecordStatus::InProgress, true));

    // Past the payment's maximum age (6 h) and an hour of quiet, nothing can still carry it.
    let clock = Arc::new(ManualClock::at(SystemClock.now_ms() + 6 * HOUR_MS - 60_000));
    let sweeper = completer(&stack, &sdk, clock.clone());
    assert_eq!(sweeper.sweep(clock.now_ms() + 30_000).await.re_enqueued, 0, "not due before the age limit");
    clock.advance_ms(HOUR_MS + 120_000);
    let sweep = sweeper.sweep(clock.now_ms() + 30_000).await;
    assert_eq!((sweep.re_enqueued, sweep.errors), (1, 0), "{sweep:?}");
    assert_eq!(sweeper.sweep(clock.now_ms() + 30_000).await.re_enqueued, 0, "not again within a quiet period");

    drive_until_empty(&p, &sqs, stack.queue_url(), stack.queue_arn(), Duration::from_secs(30)).await;
    let (_, view) = parts(&api.handle(get_payment(scope.as_str(), "lost-1")).await.unwrap());
    assert_eq!(view["status"], "SUCCEEDED", "{view}");
    let charges = ledger(&sim.base_url()).await.charges;
    assert_eq!(charges.len(), 1, "one charge, though two messages carried the payment");

    // A dead-lettered payment is the operator's: its record leaves the index, nothing is sent.
    let mut doomed = payment_body(800);
    doomed["metadata"] = json!({"simulate": "503"});
    assert_eq!(parts(&api.handle(post_payment(scope.as_str(), "dead-1", &doomed)).await.unwrap()).0, 202);
    drive_once(&p, &sqs, stack.queue_url(), stack.queue_arn(), 2, Duration::from_secs(10)).await;
    sqs.purge_queue().queue_url(stack.queue_url()).send().await.unwrap();
    let dead_key = IdempotencyKey::new("dead-1").unwrap();
    let record = p.idempotency().get(&process_key(&scope, &dead_key)).await.unwrap().unwrap();
    let failure = payments_core::failures::FailureRecord {
        partition: payments_core::failures::payment_partition(&scope, &dead_key),
        message_id: "dead-message-1".into(),
        scope: Some(scope.clone()),
        idempotency_key: Some(dead_key.clone()),
        body: "{}".into(),
        accepted_message: None,
        receive_count: 200,
        first_attempt_at_ms: Some(record.created_at_ms),
        last_attempt_at_ms: Some(record.updated_at_ms),
        last_error: Some("provider_503".into()),
        failure_class: "provider_503".into(),
        source_queue: stack.queue_url().into(),
        recorded_at_ms: record.updated_at_ms,
        kind: payments_core::failures::FailureKind::DeadLetter,
        state: payments_core::failures::FailureState::Open,
        redriven: None,
    };
    use payments_core::failures::FailureStore;
    p.failures().record(&failure).await.unwrap();
    clock.advance_ms(8 * HOUR_MS);
    let sweep = sweeper.sweep(clock.now_ms() + 30_000).await;
    assert_eq!((sweep.dismissed, sweep.re_enqueued), (1, 0), "{sweep:?}");
    let after = p.idempotency().get(&process_key(&scope, &dead_key)).await.unwrap().unwrap();
    assert_eq!(after.recovery_due_ms, None);
    assert_eq!(integration_tests::pipeline::queue_depth(&sqs, stack.queue_url()).await, 0);
}
