//! Fast tests of the processor's decisions with the in-memory adapters and a scripted gateway.
//! (The same behaviours against LocalStack are in tests/integration/tests/processor.rs.)

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::sqs::SqsMessage;
use fleet_breaker::memory::InMemoryBreakerStore;
use fleet_breaker::{BreakerStore, Circuit};
use lambda_idempotency::memory::InMemoryStore;
use lambda_idempotency::{
    ClaimOutcome, Idempotency, IdempotencyConfig, IdempotencyKey, PayloadHash, RecordStatus, Scope,
};
use lambda_sqs_batch::Jitter;
use lambda_sqs_batch::dead_letter::RecordingDeadLetterQueue;
use lambda_sqs_batch::visibility::RecordingVisibility;
use lambda_support::clock::{Clock, ManualClock};
use lambda_support::env::Env;
use payments_core::failures::FailureStore;
use payments_core::failures::memory::InMemoryFailureStore;
use payments_core::payment::{
    Charge, ChargeLookup, ChargeRequest, GatewayError, Lookup, PaymentGateway, PaymentMessage, RetryableKind,
    process_key,
};
use processor::{Adapters, PaymentFate, Ports, Processor, ProcessorConfig};

/// Answers from a script, in order; counts calls.
#[derive(Default, Clone)]
struct ScriptedGateway {
    script: Arc<Mutex<VecDeque<Result<Charge, GatewayError>>>>,
    calls: Arc<Mutex<Vec<String>>>,
    /// Real time each call takes, so that concurrent records overlap.
    delay: Duration,
    /// Answers to lookups, in order; "not charged" once empty.
    lookups: Arc<Mutex<VecDeque<Lookup>>>,
}

impl PaymentGateway for ScriptedGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        self.calls.lock().unwrap().push(request.idempotency_key.clone());
        tokio::time::sleep(self.delay).await;
        self.script.lock().unwrap().pop_front().unwrap_or_else(|| {
            Ok(Charge {
                id: "ch_default".into(),
                amount: request.amount.get(),
                currency: request.currency.code().into(),
            })
        })
    }

    async fn lookup(&self, _: &ChargeLookup) -> Lookup {
        self.lookups.lock().unwrap().pop_front().unwrap_or(Lookup::NotCharged)
    }
}

const NOW: i64 = 1_900_000_000_000;

/// The in-memory adapters, with gateway `G`.
struct Memory<G>(PhantomData<G>);

impl<G: PaymentGateway + 'static> Adapters for Memory<G> {
    type Store = InMemoryStore;
    type Failures = InMemoryFailureStore;
    type Gateway = G;
    type Visibility = RecordingVisibility;
    type Breaker = InMemoryBreakerStore;
    type DeadLetters = RecordingDeadLetterQueue;
}

type TestProcessor<G = ScriptedGateway> = Processor<Memory<G>>;

fn config() -> ProcessorConfig {
    config_with(&[])
}

/// The test configuration with `extra` variables set.
fn config_with(extra: &[(&'static str, &'static str)]) -> ProcessorConfig {
    let mut vars: HashMap<&str, &str> = [
        ("IDEMPOTENCY_TABLE", "idem"),
        ("FAILURES_TABLE", "fail"),
        ("PROVIDER_BASE_URL", "http://127.0.0.1:1"),
        ("DEAD_LETTER_QUEUE_URL", "http://127.0.0.1:1/000000000000/dlq"),
        ("PROVIDER_TIMEOUT_MS", "800"),
        ("PROVIDER_CONNECT_TIMEOUT_MS", "300"),
        ("LEASE_MARGIN_MS", "200"),
        ("BACKOFF_BASE_MS", "2000"),
        ("BACKOFF_CAP_SECONDS", "60"),
        ("BATCH_CONCURRENCY", "4"),
        ("METRICS_NAMESPACE", "Test"),
    ]
    .into_iter()
    .collect();
    vars.extend(extra.iter().copied());
    ProcessorConfig::from_env(&Env::from_lookup(move |n| vars.get(n).map(|v| (*v).to_owned()))).unwrap()
}

fn processor(gateway: ScriptedGateway, clock: &ManualClock) -> TestProcessor {
    processor_on(InMemoryStore::new(), gateway, clock)
}

/// A processor over `store`, which the test may share with its gateway.
fn processor_on<G: PaymentGateway + 'static>(
    store: InMemoryStore,
    gateway: G,
    clock: &ManualClock,
) -> TestProcessor<G> {
    processor_with(store, gateway, clock, &config())
}

fn processor_with<G: PaymentGateway + 'static>(
    store: InMemoryStore,
    gateway: G,
    clock: &ManualClock,
    config: &ProcessorConfig,
) -> TestProcessor<G> {
    let ports = Ports {
        store,
        failures: InMemoryFailureStore::default(),
        gateway,
        visibility: RecordingVisibility::default(),
        breaker: InMemoryBreakerStore::default(),
        dead_letters: RecordingDeadLetterQueue::default(),
    };
    Processor::with_clock(ports, config, Arc::new(clock.clone())).with_jitter(Jitter::seeded(1))
}

fn record(id: &str, body: &str, receive_count: u32) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.into());
    m.receipt_handle = Some(format!("rh-{id}"));
    m.body = Some(body.into());
    m.event_source_arn = Some("arn:aws:sqs:us-east-1:000000000000:payments".into());
    m.attributes.insert("ApproximateReceiveCount".into(), receive_count.to_string());
    m
}

/// A payment accepted a minute before `NOW`.
fn body(key: &str, amount: u64) -> String {
    body_accepted(key, amount, NOW - 60_000)
}

fn body_accepted(key: &str, amount: u64, accepted_ms: i64) -> String {
    let accepted = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(accepted_ms as u64));
    serde_json::json!({
        "schema_version": 1, "idempotency_key": key, "scope": "acme",
        "payment": {"amount": amount, "currency": "EUR", "payment_method": "pm_card_visa", "merchant_reference": "o-1"},
        "created_at": accepted.to_string(), "correlation_id": "c"
    })
    .to_string()
}

async fn run(p: &TestProcessor, records: &[SqsMessage]) -> Vec<PaymentFate> {
    p.process_batch(records, p.idempotency().now_ms() + 60_000, "req")
        .await
        .handled
        .into_iter()
        .map(|(_, h)| h)
        .collect()
}

#[tokio::test]
async fn in_progress_elsewhere_waits_until_that_lease_ends() {
    let clock = ManualClock::at(NOW);
    let p = processor(ScriptedGateway::default(), &clock);
    // Another worker holds the claim until NOW + 7.2 s.
    let key = process_key(&Scope::new("acme").unwrap(), &IdempotencyKey::new("k").unwrap());
    let hash = PayloadHash::of(&PaymentMessage::parse(&body("k", 10)).unwrap().payment).unwrap();
    assert!(matches!(p.idempotency().claim(&key, &hash, NOW + 7_200).await.unwrap(), ClaimOutcome::Claimed(_)));
    let handled = run(&p, &[record("m1", &body("k", 10), 1)]).await;
    assert_eq!(
        handled,
        [PaymentFate::Deferred { reason: "in_progress_elsewhere".into(), after: Duration::from_secs(8) }]
    );
    assert!(p.gateway().calls.lock().unwrap().is_empty());
    let hidden: Vec<Duration> = p.runner().visibility().calls().into_iter().map(|(_, _, d)| d).collect();
    assert_eq!(hidden, [Duration::from_secs(8)]);
}

#[tokio::test]
async fn a_decline_is_stored_and_never_retried() {
    let clock = ManualClock::at(NOW);
    let gateway = ScriptedGateway::default();
    gateway
        .script
        .lock()
        .unwrap()
        .push_back(Err(GatewayError::Declined { code: "insufficient_funds".into(), message: "no".into() }));
    let p = processor(gateway, &clock);
    assert_eq!(
        run(&p, &[record("m1", &body("k", 10), 1)]).await,
        [PaymentFate::FailedPermanently { code: "insufficient_funds".into() }]
    );
    // The redelivered copy is a duplicate: the provider is not asked again.
    assert_eq!(run(&p, &[record("m2", &body("k", 10), 1)]).await, [PaymentFate::Duplicate]);
    assert_eq!(p.gateway().calls.lock().unwrap().len(), 1);
    let stored = p
        .idempotency()
        .get(&process_key(&Scope::new("acme").unwrap(), &IdempotencyKey::new("k").unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, RecordStatus::Failed);
}

#[tokio::test]
async fn a_retryable_failure_releases_and_backs_off_by_provider_attempt_not_by_delivery() {
    let clock = ManualClock::at(NOW);
    let gateway = ScriptedGateway::default();
    gateway.script.lock().unwrap().push_back(Err(GatewayError::Retryable {
        kind: RetryableKind::ServerError { status: 503 },
        detail: "x".into(),
    }));
    let p = processor(gateway, &clock);
    // The 4th delivery, but the first provider attempt: the wait is the first attempt's.
    let handled = run(&p, &[record("m1", &body("k", 10), 4)]).await;
    let PaymentFate::Retry { reason, after } = &handled[0] else { panic!("{handled:?}") };
    assert_eq!(reason, "provider_503");
    let backoff = config().backoff;
    assert_eq!(*after, Jitter::seeded(1).delay(&backoff, 1));
    assert!(*after <= backoff.ceiling(1));
    // Released: the next delivery charges at once, with the same provider key.
    clock.advance_ms(1);
    assert!(matches!(run(&p, &[record("m1", &body("k", 10), 5)]).await[0], PaymentFate::Charged { .. }));
    let calls = p.gateway().calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0], calls[1]);
}

#[tokio::test]
async fn a_key_reused_with_another_payment_is_poison_and_the_first_stays_intact() {
    let clock = ManualClock::at(NOW);
    let p = processor(ScriptedGateway::default(), &clock);
    assert!(matches!(run(&p, &[record("m1", &body("k", 10), 1)]).await[0], PaymentFate::Charged { .. }));
    assert!(
        matches!(&run(&p, &[record("m2", &body("k", 99), 1)]).await[..], [PaymentFate::Poison { code, .. }] if code == "idempotency_key_reused")
    );
    assert_eq!(p.gateway().calls.lock().unwrap().len(), 1);
    let failures = p.failures().list(true).await.unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(
        (failures[0].failure_class.as_str(), failures[0].recorded_at_ms),
        ("idempotency_key_reused", clock.now_ms())
    );
}

/// While the charge is in flight, another worker takes the record over (our lease lapsed) and
/// settles it with `settle_as_other`: release, or complete.
struct TakenOverMeanwhile {
    store: InMemoryStore,
    clock: ManualClock,
    complete_it: bool,
}

impl PaymentGateway for TakenOverMeanwhile {
    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        let other =
            Idempotency::with_clock(self.store.clone(), IdempotencyConfig::default(), Arc::new(self.clock.clone()));
        self.clock.advance_ms(16 * 60 * 1000);
        let key = process_key(&Scope::new("acme").unwrap(), &IdempotencyKey::new("k").unwrap());
        let hash = PayloadHash::of(&PaymentMessage::parse(&body("k", 10)).unwrap().payment).unwrap();
        let ClaimOutcome::Claimed(lease) = other.claim(&key, &hash, i64::MAX).await.unwrap() else {
            panic!("take-over expected")
        };
        if self.complete_it {
            other.complete(&lease, &serde_json::json!({"charge_id": "ch_1"})).await.unwrap();
        } else {
            other.release(&lease, "provider_503").await.unwrap();
        }
        Ok(Charge { id: "ch_1".into(), amount: request.amount.get(), currency: "EUR".into() })
    }
}

#[tokio::test]
async fn a_lost_lease_with_an_unsettled_record_keeps_the_message_for_a_retry() {
    for (complete_it, expected) in [(false, "lease_lost"), (true, "")] {
        let clock = ManualClock::at(NOW);
        let store = InMemoryStore::new();
        let p = processor_on(store.clone(), TakenOverMeanwhile { store, clock: clock.clone(), complete_it }, &clock);
        let handled = p.process_batch(&[record("m1", &body("k", 10), 1)], i64::MAX, "req").await.handled;
        match (&handled[0].1, complete_it) {
            // Released by the other worker: our charge is recorded nowhere, so the message stays.
            (PaymentFate::Retry { reason, .. }, false) => assert_eq!(reason, expected),
            // Completed by the other worker: this copy is a duplicate.
            (PaymentFate::Duplicate, true) => {}
            (other, _) => panic!("unexpected {other:?}"),
        }
    }
}

fn unavailable() -> Result<Charge, GatewayError> {
    Err(GatewayError::Retryable { kind: RetryableKind::ServerError { status: 503 }, detail: "down".into() })
}

fn scripted(answers: impl IntoIterator<Item = Result<Charge, GatewayError>>) -> ScriptedGateway {
    let gateway = ScriptedGateway::default();
    gateway.script.lock().unwrap().extend(answers);
    gateway
}

async fn attempts_of(p: &TestProcessor, key: &str) -> u32 {
    let key = process_key(&Scope::new("acme").unwrap(), &IdempotencyKey::new(key).unwrap());
    p.idempotency().get(&key).await.unwrap().map_or(0, |r| r.attempts)
}

#[tokio::test]
async fn an_outage_opens_the_circuit_and_later_deliveries_wait_without_calling_or_spending() {
    let clock = ManualClock::at(NOW);
    let p = processor(scripted((0..5).map(|_| unavailable())), &clock);
    for i in 0..5 {
        let handled = run(&p, &[record(&format!("m{i}"), &body(&format!("k{i}"), 10), 1)]).await;
        assert!(matches!(&handled[0], PaymentFate::Retry { reason, .. } if reason == "provider_503"), "{handled:?}");
    }
    assert_eq!(p.breaker().store().read("payment-provider").await.unwrap().circuit, Circuit::Open);
    // The failure that opened the circuit is the provider's, not the payment's: refunded.
    assert_eq!((attempts_of(&p, "k0").await, attempts_of(&p, "k4").await), (1, 0));
    // While open: no provider call, no claim, a wait until the probe time plus jitter (≤ 30 s).
    for n in 2..12 {
        let handled = run(&p, &[record("m0", &body("k0", 10), n)]).await;
        let PaymentFate::Deferred { reason, after } = &handled[0] else { panic!("{handled:?}") };
        assert_eq!(reason, "circuit_open");
        assert!((Duration::from_secs(30)..=Duration::from_secs(60)).contains(after), "{after:?}");
    }
    assert_eq!(p.gateway().calls.lock().unwrap().len(), 5);
    assert_eq!(attempts_of(&p, "k0").await, 1, "deferrals spend nothing");
}

#[tokio::test]
async fn after_the_wait_one_probe_at_a_time_closes_the_circuit_after_three_successes() {
    let clock = ManualClock::at(NOW);
    let gateway = ScriptedGateway { delay: Duration::from_millis(50), ..scripted((0..5).map(|_| unavailable())) };
    let p = processor(gateway, &clock);
    for i in 0..5 {
        run(&p, &[record(&format!("m{i}"), &body(&format!("k{i}"), 10), 1)]).await;
    }
    clock.advance_ms(30_000);
    // A batch of five arrives together: one probes, the others wait for the half-open turn.
    let batch: Vec<_> = (0..5).map(|i| record(&format!("m{i}"), &body(&format!("k{i}"), 10), 2)).collect();
    let handled = run(&p, &batch).await;
    let charged = handled.iter().filter(|h| matches!(h, PaymentFate::Charged { .. })).count();
    let waiting =
        handled.iter().filter(|h| matches!(h, PaymentFate::Deferred { reason, .. } if reason == "circuit_half_open"));
    assert_eq!((charged, waiting.count()), (1, 4), "{handled:?}");
    for _ in 0..2 {
        clock.advance_ms(3_000);
        let handled = run(&p, &batch).await;
        assert_eq!(handled.iter().filter(|h| matches!(h, PaymentFate::Charged { .. })).count(), 1, "{handled:?}");
    }
    assert_eq!(p.breaker().store().read("payment-provider").await.unwrap().circuit, Circuit::Closed);
    clock.advance_ms(3_000);
    let handled = run(&p, &batch).await;
    assert_eq!(handled.iter().filter(|h| matches!(h, PaymentFate::Charged { .. })).count(), 2, "{handled:?}");
}

#[tokio::test]
async fn a_payment_that_keeps_failing_while_others_succeed_is_dead_lettered_after_its_budget() {
    let clock = ManualClock::at(NOW);
    // Every other call fails for "bad", so the circuit never opens: its failures are its own.
    let p = processor(ScriptedGateway::default(), &clock);
    for attempt in 1..=5u32 {
        p.gateway().script.lock().unwrap().push_back(unavailable());
        let handled = run(&p, &[record("bad", &body("bad", 10), attempt * 3)]).await;
        if attempt < 5 {
            assert!(matches!(&handled[0], PaymentFate::Retry { .. }), "attempt {attempt}: {handled:?}");
        } else {
            assert_eq!(
                handled,
                [PaymentFate::DeadLettered { reason: "budget_exhausted".into(), last_error: "provider_503".into() }]
            );
        }
        run(&p, &[record(&format!("ok{attempt}"), &body(&format!("ok{attempt}"), 10), 1)]).await;
        clock.advance_ms(61_000);
    }
    let sent = p.dead_letters().sent();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].source_message_id.as_str(), sent[0].reason.as_str()), ("bad", "budget_exhausted"));
    assert_eq!(sent[0].body, body("bad", 10), "the original body, for a redrive");
    assert!(p.runner().visibility().calls().len() == 4, "deleted, not hidden, at the end");
}

#[tokio::test]
async fn a_payment_past_its_maximum_age_waits_out_an_open_circuit_then_is_resolved_before_giving_up() {
    let clock = ManualClock::at(NOW);
    let p = processor(scripted((0..5).map(|_| unavailable())), &clock);
    for i in 0..5 {
        run(&p, &[record(&format!("m{i}"), &body(&format!("k{i}"), 10), 1)]).await;
    }
    // While the circuit is open nothing can be asked, so nothing is given up.
    let old = body_accepted("old", 10, NOW - 6 * 3600 * 1000 - 10_000);
    assert!(matches!(&run(&p, &[record("old", &old, 7)]).await[..], [PaymentFate::Deferred { .. }]));
    p.breaker().force(Circuit::Closed, Duration::ZERO).await.unwrap();
    clock.advance_ms(6_000);
    // Then one lookup, no charge: not charged, so it is given up, saying so.
    let handled = run(&p, &[record("old", &old, 8)]).await;
    assert_eq!(
        handled,
        [PaymentFate::DeadLettered { reason: "max_age_exceeded".into(), last_error: "max_age_exceeded".into() }]
    );
    assert_eq!(p.gateway().calls.lock().unwrap().len(), 5, "no new charge");
    assert_eq!(p.dead_letters().sent()[0].resolution, "not_charged");
}

#[tokio::test]
async fn a_payment_out_of_budget_whose_last_try_charged_after_all_succeeds_by_lookup() {
    let clock = ManualClock::at(NOW);
    let timeout = || Err(GatewayError::Retryable { kind: RetryableKind::Timeout, detail: "no answer".into() });
    let gateway = ScriptedGateway::default();
    for _ in 0..5 {
        gateway.script.lock().unwrap().push_back(timeout());
        // The others succeed between, so the circuit stays closed and the budget is spent.
        gateway.script.lock().unwrap().push_back(Ok(Charge { id: "ch_x".into(), amount: 10, currency: "EUR".into() }));
    }
    let charged = Charge { id: "ch_found".into(), amount: 10, currency: "EUR".into() };
    gateway.lookups.lock().unwrap().extend([Lookup::Unknown("lookup timed out".into()), Lookup::Charged(charged)]);
    let p = processor(gateway, &clock);
    let mut last = Vec::new();
    for attempt in 1..=5u32 {
        last = run(&p, &[record("t", &body("t", 10), attempt)]).await;
        run(&p, &[record(&format!("ok{attempt}"), &body(&format!("ok{attempt}"), 10), 1)]).await;
        clock.advance_ms(61_000);
    }
    // The fifth timeout spent the budget, and the lookup could not tell: keep retrying.
    assert!(matches!(&last[..], [PaymentFate::Retry { reason, .. }] if reason == "outcome_unknown"), "{last:?}");
    // The next delivery only asks (no sixth charge): charged, so it completes with that charge.
    let handled = run(&p, &[record("t", &body("t", 10), 6)]).await;
    assert_eq!(handled, [PaymentFate::Charged { charge_id: "ch_found".into() }]);
    assert_eq!(p.gateway().calls.lock().unwrap().len(), 10, "five attempts and five others, no more");
    assert!(p.dead_letters().sent().is_empty(), "never given up while it may have been charged");
}

#[tokio::test]
async fn a_dead_letter_that_cannot_be_sent_keeps_the_message() {
    let clock = ManualClock::at(NOW);
    let p = processor(scripted([unavailable()]), &clock);
    p.dead_letters().fail(true);
    let old = body_accepted("old", 10, NOW - 6 * 3600 * 1000 + 1_000);
    let handled = run(&p, &[record("old", &old, 1)]).await;
    assert!(
        matches!(&handled[0], PaymentFate::Retry { reason, .. } if reason == "dead_letter_not_sent"),
        "{handled:?}"
    );
}

#[tokio::test]
async fn a_conflict_for_one_key_says_nothing_of_the_provider_and_rate_limits_honour_retry_after() {
    let clock = ManualClock::at(NOW);
    let in_flight = || Err(GatewayError::Retryable { kind: RetryableKind::InFlight, detail: "409".into() });
    let p = processor(scripted((0..8).map(|_| in_flight())), &clock);
    for i in 0..8 {
        run(&p, &[record(&format!("m{i}"), &body(&format!("k{i}"), 10), 1)]).await;
    }
    assert_eq!(p.breaker().store().read("payment-provider").await.unwrap().failures, 0);
    let limited = Err(GatewayError::Retryable {
        kind: RetryableKind::RateLimited { retry_after: Some(Duration::from_secs(45)) },
        detail: "429".into(),
    });
    p.gateway().script.lock().unwrap().push_back(limited);
    let handled = run(&p, &[record("r", &body("r", 10), 1)]).await;
    assert!(
        matches!(&handled[0], PaymentFate::Retry { after, .. } if *after >= Duration::from_secs(45)),
        "{handled:?}"
    );
}

#[tokio::test]
async fn a_payment_that_succeeds_after_it_was_recorded_dead_has_its_failure_record_closed() {
    use payments_core::failures::{FailureKind, FailureRecord, FailureState, record::payment_partition};
    let clock = ManualClock::at(NOW);
    let p = processor(scripted([unavailable()]), &clock);
    assert!(matches!(&run(&p, &[record("m1", &body("k", 10), 1)]).await[..], [PaymentFate::Retry { .. }]));
    // Meanwhile a copy was dead-lettered and recorded as not charged.
    let (scope, key) = (Scope::new("acme").unwrap(), IdempotencyKey::new("k").unwrap());
    let dead = FailureRecord {
        partition: payment_partition(&scope, &key),
        message_id: "dead-copy".into(),
        scope: Some(scope.clone()),
        idempotency_key: Some(key.clone()),
        body: body("k", 10),
        accepted_message: None,
        receive_count: 5,
        first_attempt_at_ms: None,
        last_attempt_at_ms: None,
        last_error: Some("provider_503; provider: not charged".into()),
        failure_class: "provider_503".into(),
        source_queue: "q".into(),
        recorded_at_ms: NOW,
        kind: FailureKind::DeadLetter,
        state: FailureState::Open,
        redriven: None,
    };
    p.failures().record(&dead).await.unwrap();
    clock.advance_ms(61_000);
    assert!(matches!(&run(&p, &[record("m1", &body("k", 10), 2)]).await[..], [PaymentFate::Charged { .. }]));
    let after = p.failures().for_payment(&scope, &key).await.unwrap();
    assert!(
        matches!(&after[0].state, FailureState::Closed { note, .. } if note.starts_with("the payment succeeded later")),
        "{after:?}"
    );
}

#[tokio::test]
async fn a_conflict_for_one_key_spends_its_budget_even_while_the_circuit_is_not_closed() {
    let clock = ManualClock::at(NOW);
    let in_flight = Err(GatewayError::Retryable { kind: RetryableKind::InFlight, detail: "409".into() });
    let p = processor(scripted([in_flight]), &clock);
    // Half-open: this record is the probe, and its 409 says nothing of the provider.
    p.breaker().force(Circuit::Open, Duration::ZERO).await.unwrap();
    let handled = run(&p, &[record("m1", &body("k", 10), 1)]).await;
    assert!(
        matches!(&handled[..], [PaymentFate::Retry { reason, .. }] if reason == "provider_in_flight"),
        "{handled:?}"
    );
    assert_eq!(attempts_of(&p, "k").await, 1, "the payment's own failure: not refunded");
}

#[tokio::test]
async fn a_forced_long_open_hides_messages_no_longer_than_the_longest_breaker_wait() {
    let clock = ManualClock::at(NOW);
    let p = processor(ScriptedGateway::default(), &clock);
    p.breaker().force(Circuit::Open, Duration::from_secs(3600)).await.unwrap();
    let handled = run(&p, &[record("m1", &body("k", 10), 1)]).await;
    let PaymentFate::Deferred { after, .. } = &handled[0] else { panic!("{handled:?}") };
    // 5 min at most, plus a jitter of up to the first wait (30 s).
    assert!(*after <= Duration::from_secs(330), "{after:?}: a forced close would leave it hidden");
}

#[tokio::test]
async fn a_forged_message_with_card_data_is_poison_stored_redacted_and_touches_no_record() {
    let clock = ManualClock::at(NOW);
    let p = processor(ScriptedGateway::default(), &clock);
    let pan = "4242424242424242";
    let forged = body(pan, 10).replace("\"correlation_id\":\"c\"", &format!("\"correlation_id\":\"{pan}\""));
    let oversize = format!("{{\"junk\": \"{}\", \"card\": \"4242 4242 4242 4242\"}}", "x".repeat(200 * 1024));
    let handled = run(&p, &[record("m1", &forged, 1), record("m2", &oversize, 1)]).await;
    assert!(handled.iter().all(|h| matches!(h, PaymentFate::Poison { .. })), "{handled:?}");
    assert!(p.gateway().calls.lock().unwrap().is_empty());
    let stored = p.failures().list(true).await.unwrap();
    assert_eq!(stored.len(), 2);
    for record in &stored {
        let text = format!("{record:?}");
        assert!(!text.contains(pan) && !text.contains("4242 4242"), "stored raw: {}", &text[..200.min(text.len())]);
        assert!(record.body.len() <= payments_core::failures::MAX_STORED_BODY_BYTES + 32, "bounded body");
        assert!(record.idempotency_key.is_none(), "a card number never becomes a record key");
    }
    assert!(p.idempotency().store().snapshot().is_empty(), "no idempotency record keyed by card data");
}

#[tokio::test]
async fn a_message_of_an_unknown_schema_version_waits_then_dead_letters_without_failing_the_payment() {
    let clock = ManualClock::at(NOW);
    let p = processor(ScriptedGateway::default(), &clock);
    let future = body("k-future", 10).replace("\"schema_version\":1", "\"schema_version\":2");
    let early = run(&p, &[record("m1", &future, 1)]).await;
    assert!(
        matches!(&early[..], [PaymentFate::Retry { reason, after }] if reason == "unsupported_schema_version" && *after >= Duration::from_secs(60)),
        "{early:?}"
    );
    let late = run(&p, &[record("m1", &future, processor::VERSION_WAIT_RECEIVES)]).await;
    assert!(
        matches!(&late[..], [PaymentFate::DeadLettered { reason, .. }] if reason == "unsupported_schema_version"),
        "{late:?}"
    );
    assert_eq!(p.dead_letters().sent().len(), 1);
    let key = process_key(&Scope::new("acme").unwrap(), &IdempotencyKey::new("k-future").unwrap());
    assert!(p.idempotency().get(&key).await.unwrap().is_none(), "the payment is not marked FAILED");
}

fn rate_limited() -> Result<Charge, GatewayError> {
    let kind = RetryableKind::RateLimited { retry_after: Some(Duration::from_secs(1)) };
    Err(GatewayError::Retryable { kind, detail: "429".into() })
}

#[tokio::test]
async fn a_wave_of_429s_spends_no_attempt_and_dead_letters_nothing() {
    let clock = ManualClock::at(NOW);
    let p = processor(scripted((0..30).map(|_| rate_limited())), &clock);
    for n in 1..=30 {
        let handled = run(&p, &[record("m", &body("k", 10), n)]).await;
        assert!(
            matches!(&handled[0], PaymentFate::Retry { reason, .. } | PaymentFate::Deferred { reason, .. }
                if reason == "provider_rate_limited" || reason.starts_with("circuit_")),
            "delivery {n}: {handled:?}"
        );
        // Far enough apart for the circuit to let the next one through.
        clock.advance_ms(301_000);
    }
    assert!(p.dead_letters().sent().is_empty());
    assert_eq!(attempts_of(&p, "k").await, 0, "throttling is the provider's, not the payment's");
    assert!(p.gateway().calls.lock().unwrap().len() > 5, "more 429s than the retry budget were met");
    p.gateway().script.lock().unwrap().clear();
    assert!(matches!(&run(&p, &[record("m", &body("k", 10), 31)]).await[..], [PaymentFate::Charged { .. }]));
}

#[tokio::test]
async fn a_paced_instance_defers_what_its_rate_cannot_send_before_the_deadline() {
    let clock = ManualClock::at(NOW);
    // 4 requests per second: a slot every 250 ms. A call needs 1 s (800 ms timeout + 200 ms
    // margin), and this invocation ends 1.3 s from now: slots at 0 and 250 ms fit, 500 ms does not.
    let config = config_with(&[("PROVIDER_RATE_LIMIT", "4")]);
    let p = processor_with(InMemoryStore::new(), ScriptedGateway::default(), &clock, &config);
    let records: Vec<SqsMessage> = (0..3).map(|i| record(&format!("m{i}"), &body(&format!("k{i}"), 10), 1)).collect();
    let started = std::time::Instant::now();
    let summary = p.process_batch(&records, NOW + 1_300, "req").await;
    let mut handled: Vec<PaymentFate> = summary.handled.into_iter().map(|(_, h)| h).collect();
    handled.sort_by_key(|h| format!("{h:?}"));
    assert!(matches!(
        &handled[..],
        [PaymentFate::Charged { .. }, PaymentFate::Charged { .. }, PaymentFate::Deferred { .. }]
    ));
    assert_eq!(handled[2], PaymentFate::Deferred { reason: "provider_rate".into(), after: Duration::from_secs(1) });
    assert_eq!(p.gateway().calls.lock().unwrap().len(), 2, "the deferred charge was never sent");
    assert!(started.elapsed() >= Duration::from_millis(250), "the second call waited for its slot");
    let deferred = ["k0", "k1", "k2"];
    let mut spent = Vec::new();
    for key in deferred {
        spent.push(attempts_of(&p, key).await);
    }
    spent.sort();
    assert_eq!(spent, [0, 1, 1], "the deferred payment's claim went back, refunded");
}

#[tokio::test]
async fn a_payments_steps_are_sent_to_x_ray_as_subsegments_of_its_invocation() {
    use tracing_subscriber::layer::SubscriberExt;
    let daemon = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    daemon.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let layer = lambda_observability::xray::XRayLayer::new(daemon.local_addr().unwrap()).unwrap();
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    let header = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let invocation = tracing::info_span!("Lambda runtime invoke", requestId = "r", xrayTraceId = header);

    let clock = ManualClock::at(NOW);
    let p = processor(ScriptedGateway::default(), &clock);
    let handled = tracing::Instrument::instrument(run(&p, &[record("m1", &body("k", 10), 1)]), invocation).await;
    assert!(matches!(&handled[..], [PaymentFate::Charged { .. }]));

    let mut steps = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(n) = daemon.recv(&mut buffer) {
        let text = std::str::from_utf8(&buffer[..n]).unwrap();
        let document: serde_json::Value = serde_json::from_str(text.split_once('\n').unwrap().1).unwrap();
        assert_eq!(document["parent_id"], "53995c3f42cd8ad8");
        steps.push(document["name"].as_str().unwrap().to_owned());
    }
    assert_eq!(steps, ["claim", "charge", "settle"]);
}
