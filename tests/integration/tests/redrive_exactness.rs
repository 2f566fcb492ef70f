//! A redrive sends exactly what was accepted. For any payment the intake accepts — scopes that
//! are AWS account IDs (Luhn-valid or not) or claims, keys and references with runs of digits of
//! any length — the payment dies, the DLQ consumer records it (its display body redacted), and a
//! redrive sends a message with the same record key, the same provider idempotency key and the
//! same payload hash as the original: from the failure record's exact copy, or, where the record
//! has none, from the intake's record. Pure logic over the in-memory adapters: the LocalStack
//! tests run the same code against DynamoDB and SQS.

use std::collections::HashMap;
use std::time::Duration;

use aws_lambda_events::sqs::SqsMessage;
use dlq_consumer::{DlqConsumer, DlqConsumerConfig, DlqConsumerParts};
use intake::{Intake, IntakeConfig};
use lambda_idempotency::memory::InMemoryStore;
use lambda_idempotency::{Idempotency, IdempotencyConfig, PayloadHash};
use lambda_sqs_batch::visibility::RecordingVisibility;
use lambda_support::env::Env;
use payments_core::failures::memory::InMemoryFailureStore;
use payments_core::failures::redrive::Redriver;
use payments_core::failures::{FailureRecord, FailureStore};
use payments_core::payment::queue::InMemoryPaymentQueue;
use payments_core::payment::{
    Charge, ChargeLookup, ChargeRequest, GatewayError, Lookup, OutcomeResolver, PaymentGateway, PaymentMessage,
    process_key, provider_idempotency_key,
};
use proptest::prelude::*;
use serde_json::{Value, json};

/// A provider that holds no charge for anything (the dead payment was not charged).
#[derive(Clone)]
struct NothingCharged;

impl PaymentGateway for NothingCharged {
    async fn charge(&self, _: &ChargeRequest) -> Result<Charge, GatewayError> {
        unreachable!("a redrive never charges; it asks")
    }

    async fn lookup(&self, _: &ChargeLookup) -> Lookup {
        Lookup::NotCharged
    }
}

fn env(pairs: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
    let vars: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Env::from_lookup(move |name| vars.get(name).cloned())
}

/// A POST as API Gateway hands it over: from an IAM caller when the scope is an account ID,
/// else from a Lambda authorizer naming the scope.
fn post(scope: &str, key: &str, body: &Value) -> lambda_http::Request {
    let authorizer = if scope.len() == 12 && scope.bytes().all(|b| b.is_ascii_digit()) {
        json!({"iam": {"accessKey": "AKIA", "accountId": scope, "callerId": "AKIA", "userArn": "arn", "userId": "u"}})
    } else {
        json!({"lambda": {"scope": scope}})
    };
    let event = json!({
        "version": "2.0", "routeKey": "POST /payments", "rawPath": "/payments", "rawQueryString": "",
        "headers": {"idempotency-key": key, "content-type": "application/json"},
        "body": body.to_string(), "isBase64Encoded": false,
        "requestContext": {
            "accountId": "000000000000", "apiId": "api", "domainName": "d", "domainPrefix": "d", "requestId": "r",
            "http": {"method": "POST", "path": "/payments", "protocol": "HTTP/1.1", "sourceIp": "1.1.1.1", "userAgent": "t"},
            "routeKey": "POST /payments", "stage": "$default", "time": "t", "timeEpoch": 0, "authorizer": authorizer
        }
    });
    lambda_http::request::from_str(&event.to_string()).expect("a valid event")
}

struct World {
    store: InMemoryStore,
    failures: InMemoryFailureStore,
    accepted: InMemoryPaymentQueue,
    redriven: InMemoryPaymentQueue,
}

impl World {
    fn new() -> Self {
        Self {
            store: InMemoryStore::new(),
            failures: InMemoryFailureStore::default(),
            accepted: InMemoryPaymentQueue::default(),
            redriven: InMemoryPaymentQueue::default(),
        }
    }

    fn intake(&self) -> Intake<InMemoryStore, InMemoryFailureStore, InMemoryPaymentQueue> {
        let config = IntakeConfig::from_env(&env(&[
            ("IDEMPOTENCY_TABLE", "t"),
            ("FAILURES_TABLE", "f"),
            ("PAYMENTS_QUEUE_URL", "q"),
        ]))
        .unwrap();
        Intake::new(self.store.clone(), self.failures.clone(), self.accepted.clone(), config)
    }

    fn consumer(&self) -> DlqConsumer<InMemoryStore, InMemoryFailureStore, RecordingVisibility, NothingCharged> {
        let config = DlqConsumerConfig::from_env(&env(&[
            ("IDEMPOTENCY_TABLE", "t"),
            ("FAILURES_TABLE", "f"),
            ("PROVIDER_BASE_URL", "https://provider.example.invalid"),
        ]))
        .unwrap();
        let idempotency = Idempotency::new(self.store.clone(), IdempotencyConfig::default());
        let parts = DlqConsumerParts {
            resolver: OutcomeResolver::new(idempotency, NothingCharged),
            failures: self.failures.clone(),
            visibility: RecordingVisibility::default(),
        };
        DlqConsumer::new(parts, &config)
    }

    fn redriver(&self) -> Redriver<InMemoryFailureStore, InMemoryStore, NothingCharged, InMemoryPaymentQueue> {
        let idempotency = Idempotency::new(self.store.clone(), IdempotencyConfig::default());
        let resolver = OutcomeResolver::new(idempotency, NothingCharged);
        Redriver::new(self.failures.clone(), resolver, self.redriven.clone(), Duration::from_secs(86_400))
    }
}

/// What identifies a payment's execution: its record key, the provider's key and its hash.
fn identity(message: &PaymentMessage) -> (String, String, PayloadHash) {
    (
        process_key(&message.scope, &message.idempotency_key).partition_key(),
        provider_idempotency_key(&message.scope, &message.idempotency_key),
        PayloadHash::of(&message.payment).unwrap(),
    )
}

/// Accepts the payment, lets it die and be recorded, redrives it; the original and the redriven
/// message. `None` when the intake refuses the payment (a key or reference that looks like a
/// card number).
async fn accept_die_and_redrive(
    scope: &str,
    key: &str,
    reference: &str,
    keep_copy: bool,
) -> Option<(PaymentMessage, PaymentMessage)> {
    let world = World::new();
    let body =
        json!({"amount": 1250, "currency": "EUR", "payment_method": "pm_card_visa", "merchant_reference": reference});
    let answer = world.intake().handle(post(scope, key, &body)).await.unwrap();
    if answer.status() != 202 {
        return None;
    }
    let original = world.accepted.sent().pop().expect("enqueued");
    let mut dead = SqsMessage::default();
    dead.message_id = Some("m-dead".into());
    dead.body = Some(original.to_body());
    let consumer = world.consumer();
    consumer.record(&dead, &consumer.metrics().invocation()).await.expect("recorded");
    let mut record: FailureRecord = world.failures.list(true).await.unwrap().pop().expect("an open record");
    if !keep_copy {
        // A record written without the exact copy (say, before it was kept): the intake's record.
        record = FailureRecord { message_id: "m-older".into(), accepted_message: None, ..record };
        world.failures.record(&record).await.unwrap();
    }
    let now = lambda_support::clock::Clock::now_ms(&lambda_support::clock::SystemClock);
    world.redriver().redrive_record(&record.partition, &record.message_id, false, now).await.expect("redriven");
    let (redriven, grant) = world.redriven.sent_with_grants().pop().expect("sent again");
    assert!(grant.is_some_and(|g| g.redriven_at_ms == now), "a redrive carries its grant");
    Some((original, redriven))
}

fn scopes() -> impl Strategy<Value = String> {
    prop_oneof!["[0-9]{12}", "[a-z]{1,3}[-0-9]{0,24}", "[0-9]{1,20}"]
}

fn digit_laden() -> impl Strategy<Value = String> {
    "[a-z]{0,3}[0-9 ./-]{0,24}[a-z]{0,3}".prop_filter("non-empty", |s| !s.trim().is_empty())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn a_redrive_sends_the_accepted_payment_under_its_own_keys_and_hash(
        scope in scopes(), key in digit_laden(), reference in digit_laden(), keep_copy in any::<bool>()
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let outcome = runtime.block_on(accept_die_and_redrive(&scope, &key, &reference, keep_copy));
        prop_assume!(outcome.is_some(), "refused by the intake");
        let (original, redriven) = outcome.unwrap();
        prop_assert_eq!(identity(&redriven), identity(&original));
        prop_assert_eq!(&redriven, &original, "the very message the intake accepted");
        let read = PaymentMessage::parse(&redriven.to_body());
        prop_assert_eq!(read.as_ref(), Ok(&original), "the processor reads it");
    }
}

#[tokio::test]
async fn an_account_id_that_passes_the_luhn_check_survives_the_round_trip() {
    // The failure record's body redacts the account ID; the redrive must not send that body.
    let (original, redriven) =
        accept_die_and_redrive("368193036426", "redrive-scope-1", "order-1", true).await.unwrap();
    assert_eq!(redriven.scope.as_str(), "368193036426");
    assert_eq!(identity(&redriven), identity(&original));
}
