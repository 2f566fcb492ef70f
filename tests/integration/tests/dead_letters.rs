//! Dead letters against LocalStack: the DLQ consumer's failure records, DEAD_LETTERED status,
//! idempotent recording, redrive of one record and of the whole DLQ, and the consumer's metrics.

use std::time::{Duration, Instant};

use dlq_consumer::DeadLetterFate;
use integration_tests::http::{get_payment, parts, payment_body, post_payment};
use integration_tests::pipeline::{
    dlq_consumer, drive_once, intake, ledger, processor, queue_depth, redriver, test_config,
};
use integration_tests::{aws, own_stack, unique_scope};
use lambda_idempotency::IdempotencyKey;
use lambda_support::clock::{Clock, SystemClock};
use localenv::event_source::{delete_handled, lambda_record, receive};
use payments_core::failures::redrive::RedriveError;
use payments_core::failures::{FailureState, FailureStore};
use payments_core::payment::http_gateway::HttpGateway;
use processor::PaymentFate;
use provider_simulator::{SimConfig, Simulator};
use serde_json::json;

#[tokio::test]
async fn a_dead_payment_gets_one_failure_record_shows_dead_lettered_and_redrives_to_one_charge() {
    let sdk = aws().await;
    let stack = own_stack(&sdk, &[("MaxReceiveCount", "2")]).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let api = intake(&stack, &sdk, &[]);
    let config = test_config(&stack, &sim.base_url(), &[("BACKOFF_BASE_MS", "1000"), ("BACKOFF_CAP_SECONDS", "1")]);
    let p = processor(&config, &sdk, HttpGateway::new(&config.provider).unwrap(), 9);
    let consumer = dlq_consumer(&stack, &sdk, &sim.base_url());
    let scope = unique_scope("dead");

    // The provider fails the first two attempts; maxReceiveCount is 2.
    let mut body = payment_body(700);
    body["metadata"] = json!({"simulate": "503,503"});
    assert_eq!(parts(&api.handle(post_payment(scope.as_str(), "dead-1", &body)).await.unwrap()).0, 202);
    let started = Instant::now();
    while queue_depth(&sqs, stack.queue_url()).await > 0 {
        drive_once(&p, &sqs, stack.queue_url(), stack.queue_arn(), 1, Duration::from_secs(10)).await;
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    // The consumer records it; delivered twice (as SQS may), it still writes one record.
    let dead = receive(&sqs, stack.dlq_url(), 10, 2).await.unwrap();
    assert_eq!(dead.len(), 1);
    let records: Vec<_> = dead.iter().map(|m| lambda_record(m, stack.dlq_arn())).collect();
    let deadline = SystemClock.now_ms() + 10_000;
    let first = consumer.process_batch(&records, deadline, "r1").await;
    let second = consumer.process_batch(&records, deadline, "r2").await;
    assert!(first.response.batch_item_failures.is_empty() && second.response.batch_item_failures.is_empty());
    assert!(matches!(first.handled[..], [(_, DeadLetterFate::Recorded { .. })]), "{:?}", first.handled);
    assert!(matches!(second.handled[..], [(_, DeadLetterFate::Duplicate)]), "{:?}", second.handled);
    delete_handled(&sqs, stack.dlq_url(), &dead, &second.response).await.unwrap();
    let key = IdempotencyKey::new("dead-1").unwrap();
    let failures = consumer.failures().for_payment(&scope, &key).await.unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let failure = &failures[0];
    assert_eq!(
        (failure.failure_class.as_str(), failure.last_error.as_deref()),
        ("provider_503", Some("provider_503; provider: not charged")),
        "asked before recording: not charged"
    );
    assert_eq!(failure.state, FailureState::Open);
    assert!(failure.first_attempt_at_ms.is_some() && failure.last_attempt_at_ms >= failure.first_attempt_at_ms);
    assert!(failure.body.contains("dead-1"));

    let (_, view) = parts(&api.handle(get_payment(scope.as_str(), "dead-1")).await.unwrap());
    assert_eq!(view["status"], "DEAD_LETTERED");
    assert_eq!(view["reason"], "provider_503; provider: not charged");

    // Redrive that one record: the provider is healthy now; exactly one execution. The record
    // stays open, marked redriven, until the payment settles; meanwhile it is PROCESSING.
    let ops = redriver(&stack, &sdk, &sim.base_url());
    let redriven =
        ops.redrive_record(&failure.partition, &failure.message_id, false, SystemClock.now_ms()).await.unwrap();
    let new_id = redriven.new_message_id.expect("sent again");
    let marked = consumer.failures().get(&failure.partition, &failure.message_id).await.unwrap().unwrap();
    assert_eq!((marked.state, marked.redriven.map(|r| r.message_id)), (FailureState::Open, Some(new_id)));
    let (_, view) = parts(&api.handle(get_payment(scope.as_str(), "dead-1")).await.unwrap());
    assert_eq!(view["status"], "PROCESSING");
    let (received, summary) =
        drive_once(&p, &sqs, stack.queue_url(), stack.queue_arn(), 2, Duration::from_secs(10)).await;
    assert!(matches!(summary.handled[..], [(_, PaymentFate::Charged { .. })]), "{:?}", summary.handled);
    let accepted = api.idempotency().get(&payments_core::payment::intake_key(&scope, &key)).await.unwrap();
    assert_eq!(received[0].body(), accepted.and_then(|r| r.input).as_deref(), "exactly what the intake accepted");
    assert_eq!(ledger(&sim.base_url()).await.charges.len(), 1);
    let (_, view) = parts(&api.handle(get_payment(scope.as_str(), "dead-1")).await.unwrap());
    assert_eq!(view["status"], "SUCCEEDED");
    let settled = consumer.failures().get(&failure.partition, &failure.message_id).await.unwrap().unwrap();
    assert!(matches!(&settled.state, FailureState::Closed { note, .. } if note.contains("succeeded")), "{settled:?}");
    let again = ops.redrive_record(&failure.partition, &failure.message_id, false, SystemClock.now_ms()).await;
    assert!(matches!(again, Err(RedriveError::AlreadyClosed(_))), "{again:?}");
}

#[tokio::test]
async fn a_dead_copy_of_a_settled_payment_is_recorded_closed_and_metrics_are_emitted() {
    let sdk = aws().await;
    let stack = own_stack(&sdk, &[]).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let api = intake(&stack, &sdk, &[]);
    let config = test_config(&stack, &sim.base_url(), &[]);
    let p = processor(&config, &sdk, HttpGateway::new(&config.provider).unwrap(), 1);
    let consumer = dlq_consumer(&stack, &sdk, &sim.base_url());
    let scope = unique_scope("settled");
    assert_eq!(parts(&api.handle(post_payment(scope.as_str(), "s-1", &payment_body(10))).await.unwrap()).0, 202);
    let (received, _) = drive_once(&p, &sqs, stack.queue_url(), stack.queue_arn(), 2, Duration::from_secs(10)).await;

    // A stray copy of the same message reaches the DLQ.
    sqs.send_message().queue_url(stack.dlq_url()).message_body(received[0].body().unwrap()).send().await.unwrap();
    sqs.send_message().queue_url(stack.dlq_url()).message_body("\u{1F4A5} not a payment").send().await.unwrap();
    let dead = receive(&sqs, stack.dlq_url(), 10, 2).await.unwrap();
    assert_eq!(dead.len(), 2);
    let metrics = consumer.metrics().invocation();
    for message in &dead {
        consumer.record(&lambda_record(message, stack.dlq_arn()), &metrics).await.unwrap();
    }
    let (_, view) = parts(&api.handle(get_payment(scope.as_str(), "s-1")).await.unwrap());
    assert_eq!(view["status"], "SUCCEEDED", "a settled payment keeps its status");
    let records = consumer.failures().list(false).await.unwrap();
    assert_eq!(records.len(), 2);
    assert!(
        records.iter().any(|r| matches!(&r.state, FailureState::Closed { note, .. } if note.contains("COMPLETED")))
    );
    let raw = records.iter().find(|r| r.partition.starts_with("unparsed#")).unwrap();
    assert_eq!((raw.body.as_str(), raw.failure_class.as_str()), ("\u{1F4A5} not a payment", "unparseable"));

    let docs = metrics.documents(0);
    let dimensioned = docs.iter().find(|d| d.get("FailureClass").is_some()).expect("DeadLettered by class");
    assert_eq!(
        (dimensioned["FailureClass"].as_str(), dimensioned["DeadLettered"].as_f64()),
        (Some("unparseable"), Some(1.0))
    );
    assert_eq!(docs.iter().filter_map(|d| d.get("DeadLetteredSettled")).count(), 1);
    assert!(docs.iter().any(|d| d.get("AgeAtDeadLetter").is_some()));
}

#[tokio::test]
async fn the_whole_dlq_moves_back_only_when_asked() {
    let sdk = aws().await;
    let stack = own_stack(&sdk, &[]).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let ops = localenv::operator::dead_letter_move(&sdk, &stack);
    for i in 0..3 {
        sqs.send_message().queue_url(stack.dlq_url()).message_body(format!("{{\"n\":{i}}}")).send().await.unwrap();
    }
    assert_eq!(ops.run(true).await.unwrap(), (3, None), "dry run: counted, not moved");
    assert_eq!(queue_depth(&sqs, stack.queue_url()).await, 0);
    let (moved, task) = ops.run(false).await.unwrap();
    assert_eq!(moved, 3);
    assert!(task.is_some());
    let started = Instant::now();
    while queue_depth(&sqs, stack.queue_url()).await < 3 {
        assert!(started.elapsed() < Duration::from_secs(20), "messages not moved");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(queue_depth(&sqs, stack.dlq_url()).await, 0);
}
