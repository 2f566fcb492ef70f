//! Fast tests of the processor's decisions with the in-memory adapters and a scripted gateway.
//! (The same behaviours against LocalStack are in tests/integration/tests/processor.rs.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::sqs::SqsMessage;
use payments_core::clock::{Clock, ManualClock};
use payments_core::failures::FailureStore;
use payments_core::failures::memory::InMemoryFailureStore;
use payments_core::idempotency::memory::InMemoryStore;
use payments_core::idempotency::{
    ClaimOutcome, Idempotency, IdempotencyConfig, IdempotencyKey, PayloadHash, RecordStatus, Scope,
};
use payments_core::observability::MetricsSink;
use payments_core::payment::{
    Charge, ChargeRequest, GatewayError, PaymentGateway, PaymentMessage, RetryableKind, process_key,
};
use payments_core::sqs::visibility::RecordingVisibility;
use payments_core::sqs::{Backoff, BatchConfig, BatchRunner, Jitter};
use processor::{Handled, Processor};

/// Answers from a script, in order; counts calls.
#[derive(Default, Clone)]
struct ScriptedGateway {
    script: Arc<Mutex<VecDeque<Result<Charge, GatewayError>>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl PaymentGateway for ScriptedGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        self.calls.lock().unwrap().push(request.idempotency_key.clone());
        self.script.lock().unwrap().pop_front().unwrap_or_else(|| {
            Ok(Charge {
                id: "ch_default".into(),
                amount: request.amount.get(),
                currency: request.currency.code().into(),
            })
        })
    }
}

const NOW: i64 = 1_900_000_000_000;

fn processor(
    gateway: ScriptedGateway,
    clock: &ManualClock,
) -> Processor<InMemoryStore, InMemoryFailureStore, ScriptedGateway, RecordingVisibility> {
    processor_on(InMemoryStore::new(), gateway, clock)
}

/// A processor over `store`, which the test may share with its gateway.
fn processor_on<G: PaymentGateway>(
    store: InMemoryStore,
    gateway: G,
    clock: &ManualClock,
) -> Processor<InMemoryStore, InMemoryFailureStore, G, RecordingVisibility> {
    Processor {
        idempotency: Idempotency::with_clock(store, IdempotencyConfig::default(), Arc::new(clock.clone())),
        failures: InMemoryFailureStore::default(),
        gateway,
        runner: BatchRunner::new(
            BatchConfig { concurrency: 4, start_margin: Duration::from_secs(1) },
            RecordingVisibility::default(),
        ),
        backoff: Backoff::new(Duration::from_secs(2), Duration::from_secs(60)).unwrap(),
        jitter: Jitter::seeded(1),
        metrics: MetricsSink::new("Test", "processor"),
        clock: Arc::new(clock.clone()),
    }
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

fn body(key: &str, amount: u64) -> String {
    serde_json::json!({
        "schema_version": 1, "idempotency_key": key, "scope": "acme",
        "payment": {"amount": amount, "currency": "EUR", "payment_method": "pm_card_visa", "merchant_reference": "o-1"},
        "created_at": "2026-11-27T10:00:00Z", "correlation_id": "c"
    })
    .to_string()
}

async fn run(
    p: &Processor<InMemoryStore, InMemoryFailureStore, ScriptedGateway, RecordingVisibility>,
    records: &[SqsMessage],
) -> Vec<Handled> {
    p.process_batch(records, NOW + 60_000, "req").await.handled.into_iter().map(|(_, h)| h).collect()
}

#[tokio::test]
async fn in_progress_elsewhere_waits_until_that_lease_ends() {
    let clock = ManualClock::at(NOW);
    let p = processor(ScriptedGateway::default(), &clock);
    // Another worker holds the claim until NOW + 7.2 s.
    let key = process_key(&Scope::new("acme").unwrap(), &IdempotencyKey::new("k").unwrap());
    let hash = PayloadHash::of(&PaymentMessage::parse(&body("k", 10)).unwrap().payment).unwrap();
    assert!(matches!(p.idempotency.claim(&key, &hash, NOW + 7_200).await.unwrap(), ClaimOutcome::Claimed(_)));
    let handled = run(&p, &[record("m1", &body("k", 10), 1)]).await;
    assert_eq!(handled, [Handled::Retry { reason: "in_progress_elsewhere".into(), after: Duration::from_secs(8) }]);
    assert!(p.gateway.calls.lock().unwrap().is_empty());
    let hidden: Vec<Duration> = p.runner.visibility().calls().into_iter().map(|(_, _, d)| d).collect();
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
        [Handled::FailedPermanently { code: "insufficient_funds".into() }]
    );
    // The redelivered copy is a duplicate: the provider is not asked again.
    assert_eq!(run(&p, &[record("m2", &body("k", 10), 1)]).await, [Handled::Duplicate]);
    assert_eq!(p.gateway.calls.lock().unwrap().len(), 1);
    let stored = p
        .idempotency
        .get(&process_key(&Scope::new("acme").unwrap(), &IdempotencyKey::new("k").unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, RecordStatus::Failed);
}

#[tokio::test]
async fn a_retryable_failure_releases_and_backs_off_by_receive_count() {
    let clock = ManualClock::at(NOW);
    let gateway = ScriptedGateway::default();
    gateway.script.lock().unwrap().push_back(Err(GatewayError::Retryable {
        kind: RetryableKind::ServerError { status: 503 },
        detail: "x".into(),
    }));
    let p = processor(gateway, &clock);
    let handled = run(&p, &[record("m1", &body("k", 10), 4)]).await;
    let Handled::Retry { reason, after } = &handled[0] else { panic!("{handled:?}") };
    assert_eq!(reason, "provider_503");
    assert_eq!(*after, Jitter::seeded(1).delay(&p.backoff, 4));
    assert!(*after <= p.backoff.ceiling(4));
    // Released: the next delivery charges at once, with the same provider key.
    clock.advance_ms(1);
    assert!(matches!(run(&p, &[record("m1", &body("k", 10), 5)]).await[0], Handled::Charged { .. }));
    let calls = p.gateway.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0], calls[1]);
}

#[tokio::test]
async fn a_key_reused_with_another_payment_is_poison_and_the_first_stays_intact() {
    let clock = ManualClock::at(NOW);
    let p = processor(ScriptedGateway::default(), &clock);
    assert!(matches!(run(&p, &[record("m1", &body("k", 10), 1)]).await[0], Handled::Charged { .. }));
    assert!(
        matches!(&run(&p, &[record("m2", &body("k", 99), 1)]).await[..], [Handled::Poison { code, .. }] if code == "idempotency_key_reused")
    );
    assert_eq!(p.gateway.calls.lock().unwrap().len(), 1);
    let failures = p.failures.list(true).await.unwrap();
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
            (Handled::Retry { reason, .. }, false) => assert_eq!(reason, expected),
            // Completed by the other worker: this copy is a duplicate.
            (Handled::Duplicate, true) => {}
            (other, _) => panic!("unexpected {other:?}"),
        }
    }
}
