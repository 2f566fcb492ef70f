//! Paths of the deployed functions that the demo's workload does not take, driven through a
//! running local pipeline (so the functions' AWS calls are recorded as theirs): an operator's
//! redrive, a dead copy of a payment the provider did charge, and a payment whose message
//! vanished. Together with the workload they exercise every permission the template grants, so
//! the permission check can tell a grant no path uses.

use std::time::{Duration, Instant};

use lambda_idempotency::dynamodb::attributes::item_from_record;
use lambda_idempotency::{IdempotencyKey, IdempotencyRecord, OwnerToken, PayloadHash, RecordStatus, Scope};
use lambda_support::clock::{Clock, SystemClock, rfc3339_ms};
use localenv::pipeline::Running;
use payments_core::failures::dynamodb::DynamoDbFailureStore;
use payments_core::failures::{FailedMessage, FailureKind, FailureRecord, FailureStore};
use payments_core::payment::{
    ChargeRequest, KeyHint, PaymentGateway, PaymentMessage, PaymentStatus, PaymentView, intake_key, process_key,
    provider_idempotency_key,
};

/// How long a planted path may take to play out.
const PATIENCE: Duration = Duration::from_secs(120);

fn dynamodb(running: &Running) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(running.sdk())
}

fn failures(running: &Running) -> DynamoDbFailureStore {
    DynamoDbFailureStore::new(dynamodb(running), running.stack.failures_table())
}

/// Waits until `done` holds, or panics with `what` after `PATIENCE`.
pub async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < PATIENCE, "not within {PATIENCE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The payment's status as its caller reads it through the local API (signed as the deployed
/// API wants).
pub async fn status(running: &Running, scope: &str, key: &str) -> Option<PaymentStatus> {
    let client = reqwest::Client::new();
    let request = client.get(format!("{}/{key}", running.intake_url())).build().ok()?;
    let response = client.execute(localenv::caller::identified(request, scope)).await.ok()?;
    Some(response.json::<PaymentView>().await.ok()?.status)
}

/// The operator's path: the open failure record of a dead-lettered payment of `scope` is redriven
/// with `ops redrive`'s own tool (the provider as the stack names it, the key from its secret).
/// Returns the payment's key.
pub async fn redrive_a_dead_letter(running: &Running, scope: &Scope) -> IdempotencyKey {
    let open = failures(running).list(true).await.expect("failure records");
    let record = open
        .iter()
        .find(|r| r.scope.as_ref() == Some(scope) && r.kind == FailureKind::DeadLetter)
        .unwrap_or_else(|| panic!("no dead letter of {scope} among {open:?}"));
    let provider = localenv::operator::provider(running.sdk(), &running.stack, None).expect("provider client");
    let redriver = localenv::operator::redriver(running.sdk(), &running.stack, provider, Duration::from_secs(86_400));
    let done = redriver.redrive_record(&record.partition, &record.message_id, false, SystemClock.now_ms()).await;
    assert!(done.as_ref().is_ok_and(|d| d.new_message_id.is_some()), "redriven: {done:?}");
    record.idempotency_key.clone().expect("a payment's record")
}

/// `n` spelled with a letter per digit (`0` → `a`): unique per run, and never a run of digits
/// the card-data detector could take for a card number.
fn digits_as_letters(n: i64) -> String {
    n.to_string().bytes().map(|d| char::from(b'a' + (d - b'0'))).collect()
}

/// A payment message of `scope`, as the intake would have enqueued it at `created_ms`.
fn message(scope: &str, key: &str, created_ms: i64) -> PaymentMessage {
    let body = serde_json::json!({
        "schema_version": 1, "idempotency_key": key, "scope": scope, "created_at": rfc3339_ms(created_ms),
        "correlation_id": format!("rare-{key}"),
        "payment": {"amount": 4200, "currency": "EUR", "payment_method": "pm_card_visa", "merchant_reference": key},
    });
    PaymentMessage::parse(&body.to_string()).expect("a valid message")
}

/// The idempotency record a claim of `key` for `message` leaves, as the store keeps it.
fn record(key: &str, message: &PaymentMessage, now: i64) -> IdempotencyRecord {
    IdempotencyRecord {
        partition_key: key.to_owned(),
        status: RecordStatus::InProgress,
        payload_hash: PayloadHash::of(&message.payment).expect("hashable"),
        owner: None,
        lease_until_ms: 0,
        result: None,
        failure: None,
        last_error: Some("provider_timeout".into()),
        attempts: 1,
        created_at_ms: now,
        updated_at_ms: now,
        expires_at_s: now / 1000 + 86_400,
        recovery_due_ms: None,
        input: None,
    }
}

async fn put(running: &Running, record: &IdempotencyRecord) {
    dynamodb(running)
        .put_item()
        .table_name(running.stack.idempotency_table())
        .set_item(Some(item_from_record(record)))
        .send()
        .await
        .expect("record planted");
}

/// A crash loop after the provider charged: the payment's record still held by a worker whose
/// lease ends in 3 s, an earlier dead copy recorded "not charged", and another dead copy in the
/// DLQ. The DLQ consumer finds the charge, cannot claim the record while the lease lives (the
/// dead message waits), then completes the payment with the charge and closes the earlier
/// record. Returns the payment's (scope, key).
pub async fn a_charged_payment_dies(running: &Running, scope: &Scope) -> IdempotencyKey {
    let now = SystemClock.now_ms();
    let key = format!("charged-dead-{}", digits_as_letters(now));
    let message = message(scope.as_str(), &key, now);
    let provider = localenv::operator::provider(running.sdk(), &running.stack, None).expect("provider client");
    let charge = ChargeRequest {
        idempotency_key: provider_idempotency_key(&message.scope, &message.idempotency_key),
        amount: message.payment.amount,
        currency: message.payment.currency,
        payment_method: message.payment.payment_method.clone(),
        merchant_reference: message.payment.merchant_reference.clone(),
        metadata: message.payment.metadata.clone(),
    };
    // The simulator injects faults into these calls too; the key makes the retries safe.
    let mut charged = provider.charge(&charge).await;
    for _ in 0..20 {
        if charged.is_ok() {
            break;
        }
        charged = provider.charge(&charge).await;
    }
    charged.expect("the provider charged it");
    let held = IdempotencyRecord {
        owner: Some(OwnerToken::random()),
        lease_until_ms: now + 3_000,
        ..record(&process_key(&message.scope, &message.idempotency_key).partition_key(), &message, now)
    };
    put(running, &held).await;
    let hint = KeyHint { scope: message.scope.clone(), idempotency_key: message.idempotency_key.clone() };
    let body = message.to_body();
    let copy = FailedMessage {
        message_id: "earlier-dead-copy",
        hint: Some(&hint),
        body: &body,
        receive_count: 3,
        source_queue: "planted",
    };
    let earlier = FailureRecord::open(FailureKind::DeadLetter, copy, "provider_timeout".into(), now);
    failures(running).record(&earlier).await.expect("earlier record planted");
    send(running, running.stack.dlq_url(), &body).await;
    message.idempotency_key
}

async fn send(running: &Running, queue_url: &str, body: &str) {
    aws_sdk_sqs::Client::new(running.sdk())
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .send()
        .await
        .expect("sent");
}

/// A payment whose message vanished: accepted two hours ago (past the local maximum age of
/// 30 minutes), its processor record released and untouched since, its recovery due. The
/// completer re-enqueues it from the intake's record; the processor, finding it too old to
/// charge, asks the provider (not charged) and dead-letters it.
pub async fn a_message_vanishes(running: &Running, scope: &Scope) -> IdempotencyKey {
    let now = SystemClock.now_ms();
    let then = now - 2 * 3_600_000;
    let key = format!("vanished-{}", digits_as_letters(now));
    let message = message(scope.as_str(), &key, then);
    let accepted = IdempotencyRecord {
        status: RecordStatus::Completed,
        result: Some(payments_core::payment::acceptance(&message).to_string()),
        input: Some(message.to_body()),
        ..record(&intake_key(&message.scope, &message.idempotency_key).partition_key(), &message, then)
    };
    let processing = IdempotencyRecord {
        recovery_due_ms: Some(then + 1_800_000),
        ..record(&process_key(&message.scope, &message.idempotency_key).partition_key(), &message, then)
    };
    put(running, &accepted).await;
    put(running, &processing).await;
    message.idempotency_key
}
