//! A provider outage against LocalStack: the circuit breaker's conditional writes in DynamoDB
//! (many instances, one prober), the processor holding calls back while the circuit is open
//! without spending retry budget, and a payment that exhausts its budget dead-lettered by the
//! processor itself and recorded once by the DLQ consumer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_breaker::dynamodb::DynamoDbBreakerStore;
use fleet_breaker::{
    Admitted, BreakerConfig, BreakerPolicy, BreakerState, BreakerStore, Circuit, CircuitBreaker, Permit, Written,
};
use futures::future::join_all;
use integration_tests::pipeline::{
    dlq_consumer, drive_once, drive_until_empty, ledger, payment, processor, queue_depth, send, test_config,
};
use integration_tests::{aws, own_stack, shared_stack, unique_scope};
use lambda_idempotency::{IdempotencyKey, RecordStatus};
use lambda_support::clock::{Clock, SystemClock};
use localenv::event_source::{delete_handled, lambda_record, receive};
use payments_core::failures::{FailureState, FailureStore};
use payments_core::payment::http_gateway::HttpGateway;
use payments_core::payment::process_key;
use processor::PaymentFate;
use provider_simulator::{FaultRates, SimConfig, Simulator};
use serde_json::json;

fn store(sdk: &aws_config::SdkConfig) -> DynamoDbBreakerStore {
    DynamoDbBreakerStore::new(aws_sdk_dynamodb::Client::new(sdk), shared_stack().idempotency_table())
}

fn instance(store: DynamoDbBreakerStore, name: &str) -> CircuitBreaker<DynamoDbBreakerStore> {
    let config = BreakerConfig {
        name: name.to_owned(),
        policy: BreakerPolicy::default(),
        cache_for: Duration::from_secs(5),
        half_open_wait: Duration::from_secs(2),
    };
    CircuitBreaker::new(store, config, Arc::new(SystemClock))
}

#[tokio::test]
async fn writes_are_accepted_only_over_the_version_they_were_computed_from() {
    let sdk = aws().await;
    let store = store(&sdk);
    let name = unique_scope("versions").as_str().to_owned();
    assert_eq!(store.read(&name).await.unwrap(), BreakerState::default(), "never written reads closed");
    let first = BreakerState { failures: 1, window_start_ms: 5, version: 1, ..BreakerState::default() };
    assert_eq!(store.write(&name, &first).await.unwrap(), Written::Stored);
    // A second writer that also computed from version 0 loses and is told what stands.
    let rival = BreakerState { failures: 1, window_start_ms: 6, version: 1, ..BreakerState::default() };
    assert_eq!(store.write(&name, &rival).await.unwrap(), Written::Conflict(first.clone()));
    let next = BreakerState { failures: 2, version: 2, ..first };
    assert_eq!(store.write(&name, &next).await.unwrap(), Written::Stored);
    assert_eq!(store.read(&name).await.unwrap(), next);
}

#[tokio::test]
async fn sixteen_instances_racing_for_the_half_open_probe_get_exactly_one_prober() {
    let sdk = aws().await;
    let name = unique_scope("probe").as_str().to_owned();
    for round in 0..3 {
        let instances: Vec<_> = (0..16).map(|_| instance(store(&sdk), &name)).collect();
        // Open with its wait already over: the next admission is the half-open race.
        instances[0].force(Circuit::Open, Duration::ZERO).await.unwrap();
        let admitted = join_all(instances.iter().map(|b| b.admit())).await;
        let probes = admitted.iter().filter(|a| matches!(a, Admitted::Go(Permit::Probe(_)))).count();
        let waiting = admitted.iter().filter(|a| matches!(a, Admitted::Wait { .. })).count();
        assert_eq!((probes, waiting), (1, 15), "round {round}: {admitted:?}");
    }
}

/// The provider answers 503 to everything; then it recovers.
#[tokio::test]
async fn an_outage_opens_the_circuit_holds_calls_back_and_everything_succeeds_after_recovery() {
    let sdk = aws().await;
    let stack = own_stack(&sdk, &[("MaxReceiveCount", "50")]).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let down = SimConfig { rates: FaultRates { unavailable: 1.0, ..FaultRates::default() }, ..SimConfig::default() };
    let sim = Simulator::start(down).await.unwrap();
    let config = test_config(
        &stack,
        &sim.base_url(),
        &[("BREAKER_OPEN_SECONDS", "2"), ("BREAKER_OPEN_MAX_SECONDS", "2"), ("BREAKER_HALF_OPEN_WAIT_MS", "500")],
    );
    let p = processor(&config, &sdk, HttpGateway::new(&config.provider).unwrap(), 7);
    let scope = unique_scope("outage");
    let bodies: Vec<String> = (0..20).map(|i| payment(&scope, &format!("o-{i}"), 100, json!({})).to_body()).collect();
    send(&sqs, stack.queue_url(), &bodies).await;

    // Six seconds of outage: about three probe rounds.
    let started = Instant::now();
    let mut handled = Vec::new();
    while started.elapsed() < Duration::from_secs(6) {
        let (_, summary) = drive_once(&p, &sqs, stack.queue_url(), stack.queue_arn(), 1, Duration::from_secs(10)).await;
        handled.extend(summary.handled.into_iter().map(|(_, h)| h));
    }
    let during = ledger(&sim.base_url()).await.requests;
    let deferred = handled.iter().filter(|h| matches!(h, PaymentFate::Deferred { .. })).count();
    // Five failures open the circuit; the rest of that batch (concurrency 10) may still be in
    // flight; after that, only probes: two per round (the second failure reopens), three rounds.
    let probes = 6;
    assert!(during <= 10 + probes + 2, "{during} provider requests during the outage: a retry storm");
    assert!(deferred >= 10, "deliveries held back by the open circuit: {handled:?}");
    assert!(!handled.iter().any(|h| matches!(h, PaymentFate::DeadLettered { .. })));
    let breaker = DynamoDbBreakerStore::new(aws_sdk_dynamodb::Client::new(&sdk), stack.idempotency_table());
    assert_eq!(breaker.read("payment-provider").await.unwrap().circuit, Circuit::Open);
    for i in 0..20 {
        let key = process_key(&scope, &IdempotencyKey::new(&format!("o-{i}")).unwrap());
        let attempts = p.idempotency().get(&key).await.unwrap().map_or(0, |r| r.attempts);
        assert!(attempts <= 1, "o-{i}: an outage spent {attempts} attempts of its budget");
    }

    // The provider recovers: one probe at a time closes the circuit, and everything succeeds.
    reqwest::Client::new()
        .put(format!("{}/_sim/config", sim.base_url()))
        .json(&SimConfig::default())
        .send()
        .await
        .unwrap();
    drive_until_empty(&p, &sqs, stack.queue_url(), stack.queue_arn(), Duration::from_secs(90)).await;
    assert_eq!(ledger(&sim.base_url()).await.charges.len(), 20);
    assert_eq!(breaker.read("payment-provider").await.unwrap().circuit, Circuit::Closed);
    assert_eq!(queue_depth(&sqs, stack.dlq_url()).await, 0, "nothing dead-lettered");
}

#[tokio::test]
async fn a_payment_that_exhausts_its_budget_is_dead_lettered_by_the_processor_and_recorded_once() {
    let sdk = aws().await;
    let stack = own_stack(&sdk, &[("MaxReceiveCount", "50")]).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let config = test_config(&stack, &sim.base_url(), &[("MAX_PROVIDER_ATTEMPTS", "3"), ("BACKOFF_CAP_SECONDS", "1")]);
    let p = processor(&config, &sdk, HttpGateway::new(&config.provider).unwrap(), 3);
    let scope = unique_scope("budget");
    let body = payment(&scope, "b-1", 100, json!({"simulate": "409,409,409,409"})).to_body();
    send(&sqs, stack.queue_url(), std::slice::from_ref(&body)).await;
    let summaries = drive_until_empty(&p, &sqs, stack.queue_url(), stack.queue_arn(), Duration::from_secs(30)).await;
    let handled: Vec<PaymentFate> = summaries.into_iter().flat_map(|s| s.handled.into_iter().map(|(_, h)| h)).collect();
    assert_eq!(handled.len(), 3, "three attempts: {handled:?}");
    assert_eq!(
        handled[2],
        PaymentFate::DeadLettered { reason: "budget_exhausted".into(), last_error: "provider_in_flight".into() }
    );
    let record = p.idempotency().get(&process_key(&scope, &IdempotencyKey::new("b-1").unwrap())).await.unwrap();
    assert_eq!(record.map(|r| (r.status, r.attempts)), Some((RecordStatus::InProgress, 3)), "released, for a redrive");

    // The DLQ consumer records it under the original message id, once even if delivered twice.
    let dead = receive(&sqs, stack.dlq_url(), 10, 2).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some(body.as_str()));
    let consumer = dlq_consumer(&stack, &sdk, &sim.base_url());
    let records: Vec<_> = dead.iter().map(|m| lambda_record(m, stack.dlq_arn())).collect();
    let deadline = SystemClock.now_ms() + 10_000;
    consumer.process_batch(&records, deadline, "r1").await;
    let answer = consumer.process_batch(&records, deadline, "r2").await;
    delete_handled(&sqs, stack.dlq_url(), &dead, &answer.response).await.unwrap();
    let failures = consumer.failures().for_payment(&scope, &IdempotencyKey::new("b-1").unwrap()).await.unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let source_id = dead[0].message_attributes().and_then(|a| a.get("SourceMessageId")).and_then(|v| v.string_value());
    assert_eq!(Some(failures[0].message_id.as_str()), source_id);
    assert_eq!(failures[0].state, FailureState::Open);
    assert_eq!(
        failures[0].last_error.as_deref(),
        Some("budget_exhausted after 3 attempts; last error: provider_in_flight; provider: not charged")
    );
    assert_eq!(failures[0].source_queue, stack.queue_arn());
    assert!(ledger(&sim.base_url()).await.charges.is_empty());
}
