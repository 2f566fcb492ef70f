//! The completer's decisions with the in-memory adapters and a hand-moved clock. (Against
//! LocalStack, with the real sparse index: tests/integration/tests/completer.rs.)

use std::sync::Arc;

use completer::{Completer, CompleterConfig, Sweep};
use lambda_idempotency::memory::InMemoryStore;
use lambda_idempotency::{
    ClaimOutcome, Idempotency, IdempotencyKey, Lease, PayloadHash, RecordStatus, Recovery, Scope,
};
use lambda_support::clock::{Clock, ManualClock, rfc3339_ms};
use lambda_support::env::Env;
use payments_core::failures::memory::InMemoryFailureStore;
use payments_core::failures::{FailureKind, FailureRecord, FailureState, FailureStore, payment_partition};
use payments_core::payment::envelope::SCHEMA_VERSION;
use payments_core::payment::queue::InMemoryPaymentQueue;
use payments_core::payment::{EnqueueError, PaymentMessage, acceptance, intake_key, process_key};

const NOW: i64 = 1_900_000_000_000;
const HOUR: i64 = 3_600_000;

struct World {
    clock: ManualClock,
    completer: Completer<InMemoryStore, InMemoryFailureStore, InMemoryPaymentQueue>,
    failures: InMemoryFailureStore,
    queue: InMemoryPaymentQueue,
}

fn world() -> World {
    let clock = ManualClock::at(NOW);
    let config = CompleterConfig::from_env(&Env::from_lookup(|name| {
        let value = match name {
            "IDEMPOTENCY_TABLE" => "idem",
            "FAILURES_TABLE" => "fail",
            "PAYMENTS_QUEUE_URL" => "http://127.0.0.1:1/q",
            _ => return None,
        };
        Some(value.to_owned())
    }))
    .unwrap();
    let (failures, queue) = (InMemoryFailureStore::default(), InMemoryPaymentQueue::default());
    let idempotency = Idempotency::with_clock(InMemoryStore::new(), config.idempotency, Arc::new(clock.clone()));
    let completer = Completer::new(idempotency, failures.clone(), queue.clone(), &config);
    World { clock, completer, failures, queue }
}

fn message(key: &str) -> PaymentMessage {
    let body = serde_json::json!({
        "schema_version": SCHEMA_VERSION,
        "idempotency_key": key,
        "scope": "acme",
        "payment": {"amount": 1250, "currency": "EUR", "payment_method": "pm_card_visa", "merchant_reference": key},
        "created_at": rfc3339_ms(NOW),
        "correlation_id": "c-1",
    });
    PaymentMessage::parse(&body.to_string()).unwrap()
}

fn hash(m: &PaymentMessage) -> PayloadHash {
    PayloadHash::of(&m.payment).unwrap()
}

impl World {
    /// What an intake that dies right after its claim leaves: a recoverable claim, never completed.
    async fn abandoned_intake(&self, m: &PaymentMessage, input: Option<String>) -> Lease {
        let key = intake_key(&m.scope, &m.idempotency_key);
        let recovery = Recovery { due_ms: NOW + 12_000, input };
        let hash = hash(m);
        let claimed = self.completer.idempotency().claim_recoverable(&key, &hash, NOW + 10_000, Some(recovery));
        let ClaimOutcome::Claimed(lease) = claimed.await.unwrap() else { panic!("fresh claim") };
        lease
    }

    /// What the processor leaves after a retryable failure: released, due at the payment's age limit.
    async fn released_payment(&self, m: &PaymentMessage) {
        let key = process_key(&m.scope, &m.idempotency_key);
        let recovery = Recovery { due_ms: NOW + 6 * HOUR, input: None };
        let hash = hash(m);
        let claimed = self.completer.idempotency().claim_recoverable(&key, &hash, NOW + 5_000, Some(recovery));
        let ClaimOutcome::Claimed(lease) = claimed.await.unwrap() else { panic!("fresh claim") };
        self.completer.idempotency().release(&lease, "provider_timeout").await.unwrap();
    }

    async fn sweep(&self) -> Sweep {
        self.completer.sweep(self.clock.now_ms() + 60_000).await
    }
}

#[tokio::test]
async fn an_acceptance_abandoned_before_enqueueing_is_enqueued_once_and_completed_after_its_grace() {
    let w = world();
    let m = message("k-1");
    w.abandoned_intake(&m, Some(m.to_body())).await;

    w.clock.advance_ms(11_000);
    assert_eq!(w.sweep().await, Sweep::default(), "not due before lease + grace");
    assert!(w.queue.sent().is_empty());

    w.clock.advance_ms(1_000);
    assert_eq!(w.sweep().await.enqueued, 1);
    assert_eq!(w.queue.sent(), vec![m.clone()], "the stored message, byte for byte");
    let record = w.completer.idempotency().get(&intake_key(&m.scope, &m.idempotency_key)).await.unwrap().unwrap();
    assert_eq!(record.status, RecordStatus::Completed);
    let stored: serde_json::Value = serde_json::from_str(record.result.as_deref().unwrap()).unwrap();
    assert_eq!(stored, acceptance(&m), "the 202 the intake would have stored, replayed to a late retry");

    w.clock.advance_ms(HOUR);
    assert_eq!(w.sweep().await, Sweep::default(), "finished records leave the index");
    assert_eq!(w.queue.sent().len(), 1);
}

#[tokio::test]
async fn an_acceptance_the_intake_finished_in_time_is_left_alone() {
    let w = world();
    let m = message("k-2");
    let lease = w.abandoned_intake(&m, Some(m.to_body())).await;
    w.completer.idempotency().complete(&lease, &acceptance(&m)).await.unwrap();
    w.clock.advance_ms(HOUR);
    assert_eq!(w.sweep().await, Sweep::default());
    assert!(w.queue.sent().is_empty());
}

#[tokio::test]
async fn a_queue_failure_gives_the_claim_back_and_the_next_run_enqueues() {
    let w = world();
    let m = message("k-3");
    w.abandoned_intake(&m, Some(m.to_body())).await;
    w.clock.advance_ms(HOUR);
    w.queue.fail_with(Some(EnqueueError { retryable: true, detail: "throttled".into() }));
    assert_eq!(w.sweep().await.errors, 1);
    w.queue.fail_with(None);
    assert_eq!(w.sweep().await.enqueued, 1);
    assert_eq!(w.queue.sent().len(), 1);
}

#[tokio::test]
async fn an_acceptance_without_a_stored_message_is_reported_once_not_retried_forever() {
    let w = world();
    let m = message("k-4");
    w.abandoned_intake(&m, None).await;
    w.clock.advance_ms(HOUR);
    assert_eq!(w.sweep().await.unrecoverable, 1);
    assert_eq!(w.sweep().await, Sweep::default(), "no longer watched");
    assert!(w.queue.sent().is_empty());
}

#[tokio::test]
async fn a_payment_left_in_progress_past_its_age_and_quiet_is_re_enqueued_once_per_quiet_period() {
    let w = world();
    let m = message("k-5");
    w.abandoned_intake(&m, Some(m.to_body())).await;
    w.clock.advance_ms(12_000);
    assert_eq!(w.sweep().await.enqueued, 1, "the intake finished by the completer");
    w.released_payment(&m).await;

    w.clock.advance_ms(6 * HOUR - HOUR / 2);
    w.released_payment(&m).await; // a later delivery tried again and released
    w.clock.advance_ms(HOUR / 2);
    let early = w.sweep().await;
    assert_eq!((early.re_enqueued, early.skipped), (0, 1), "due, but touched within the quiet hour");

    w.clock.advance_ms(HOUR);
    assert_eq!(w.sweep().await.re_enqueued, 1);
    assert_eq!(w.queue.sent().len(), 2, "the intake's copy and the completer's");
    assert_eq!(w.sweep().await, Sweep::default(), "not again within the next quiet period");
    w.clock.advance_ms(HOUR + 1);
    assert_eq!(w.sweep().await.re_enqueued, 1, "still nobody took it: once more");
}

#[tokio::test]
async fn a_dead_lettered_payment_belongs_to_the_operator_and_is_not_re_enqueued() {
    let w = world();
    let m = message("k-6");
    w.abandoned_intake(&m, Some(m.to_body())).await;
    w.clock.advance_ms(12_000);
    w.sweep().await;
    w.released_payment(&m).await;
    w.failures
        .record(&FailureRecord {
            partition: payment_partition(&m.scope, &m.idempotency_key),
            message_id: "dead-1".into(),
            scope: Some(Scope::new("acme").unwrap()),
            idempotency_key: Some(IdempotencyKey::new("k-6").unwrap()),
            body: m.to_body(),
            accepted_message: None,
            receive_count: 3,
            first_attempt_at_ms: None,
            last_attempt_at_ms: None,
            last_error: Some("provider_503".into()),
            failure_class: "provider_503".into(),
            source_queue: "q".into(),
            recorded_at_ms: NOW,
            kind: FailureKind::DeadLetter,
            state: FailureState::Open,
            redriven: None,
        })
        .await
        .unwrap();
    w.clock.advance_ms(8 * HOUR);
    assert_eq!(w.sweep().await.dismissed, 1);
    assert_eq!(w.sweep().await, Sweep::default());
    assert_eq!(w.queue.sent().len(), 1, "only the intake's copy");
}
