//! Fast tests of the intake's error paths with in-memory adapters (the LocalStack tests cover the
//! rest through the same handler).

use intake::Intake;
use lambda_http::{Body, Request};
use lambda_idempotency::memory::InMemoryStore;
use payments_core::failures::memory::InMemoryFailureStore;
use payments_core::payment::queue::InMemoryPaymentQueue;
use payments_core::payment::{EnqueueError, PaymentMessage, PaymentQueue};
use serde_json::{Value, json};

mod support;
use support::{from_account, intake_on, request};

fn intake<Q: PaymentQueue>(queue: Q) -> Intake<InMemoryStore, InMemoryFailureStore, Q> {
    intake_on(InMemoryStore::new(), queue)
}

fn post(key: &str) -> Request {
    let body = json!({"amount": 5, "currency": "EUR", "payment_method": "pm_card_visa", "merchant_reference": "o"});
    let headers = [("idempotency-key", key), ("x-local-scope", "acme"), ("content-type", "application/json")];
    request("POST", "/payments", &headers, &body.to_string())
}

fn json_of(response: &lambda_http::Response<Body>) -> Value {
    match response.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("unexpected body {other:?}"),
    }
}

#[tokio::test]
async fn an_enqueue_failure_answers_503_and_frees_the_key_for_the_retry() {
    let queue = InMemoryPaymentQueue::default();
    queue.fail_with(Some(EnqueueError { retryable: true, detail: "SQS throttled".into() }));
    let api = intake(queue.clone());
    let failed = api.handle(post("k1")).await.unwrap();
    assert_eq!(failed.status(), 503);
    assert_eq!(failed.headers()["retry-after"], "1");
    assert_eq!(json_of(&failed)["type"], format!("{}service-unavailable", intake::problem::DEFAULT_TYPE_BASE));

    queue.fail_with(None);
    let retried = api.handle(post("k1")).await.unwrap();
    assert_eq!(retried.status(), 202, "released at once: no 409 while a lease runs out");
    assert_eq!(queue.sent().len(), 1);
}

/// A queue with a bug.
struct PanickingQueue;

impl PaymentQueue for PanickingQueue {
    async fn enqueue(&self, _: &PaymentMessage) -> Result<(), EnqueueError> {
        panic!("bug in the queue adapter")
    }

    async fn redrive(
        &self,
        _: &PaymentMessage,
        _: &payments_core::payment::RedriveGrant,
    ) -> Result<String, EnqueueError> {
        unreachable!("the intake never redrives")
    }
}

#[tokio::test]
async fn a_panic_becomes_a_500_with_a_correlation_id() {
    let response = intake(PanickingQueue).handle(post("k2")).await.unwrap();
    assert_eq!(response.status(), 500);
    let problem = json_of(&response);
    let id = problem["correlation_id"].as_str().unwrap();
    assert!(!id.is_empty());
    assert_eq!(response.headers()["x-correlation-id"], id);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
}

/// Deployed with IAM auth, every scope is a 12-digit account ID, and about one in ten passes the
/// Luhn check (405608656907 does). Such a caller is served like any other: accepted, enqueued
/// under its account, and its status read back.
#[tokio::test]
async fn a_caller_whose_account_id_passes_the_luhn_check_is_served() {
    let account = "405608656907";
    assert!(payments_core::payment::card_data::contains_card_number(account), "the case this test is about");
    let queue = InMemoryPaymentQueue::default();
    let api = intake(queue.clone());
    let body = json!({"amount": 5, "currency": "EUR", "payment_method": "pm_card_visa", "merchant_reference": "o"});
    let headers = [("idempotency-key", "order-1"), ("content-type", "application/json")];
    let accepted = api.handle(from_account(account, "POST", "/payments", &headers, &body.to_string())).await.unwrap();
    assert_eq!(accepted.status(), 202, "{:?}", json_of(&accepted));
    let sent = queue.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].scope.as_str(), account);
    assert_eq!(PaymentMessage::parse(&sent[0].to_body()).unwrap(), sent[0], "the processor reads it back");
    let status = api.handle(from_account(account, "GET", "/payments/order-1", &[], "")).await.unwrap();
    assert_eq!((status.status().as_u16(), json_of(&status)["status"].clone()), (200, json!("RECEIVED")));
    let other = api.handle(from_account("945807302157", "GET", "/payments/order-1", &[], "")).await.unwrap();
    assert_eq!(other.status(), 404, "another account's key is another payment");
}

/// Every problem `type` resolves to documentation that exists: by default the base is the API's
/// own `/problems/` route, which this function serves without a caller identity.
#[tokio::test]
async fn every_problem_type_is_served_as_its_documentation() {
    let api = intake(InMemoryPaymentQueue::default());
    let refused = api.handle(request("POST", "/payments", &[("x-local-scope", "acme")], "{}")).await.unwrap();
    let problem = json_of(&refused);
    let type_url = problem["type"].as_str().unwrap();
    assert_eq!(type_url, "/problems/missing-idempotency-key");
    let served = api.handle(request("GET", type_url, &[], "")).await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "text/markdown; charset=utf-8");
    let Body::Text(text) = served.body() else { panic!("a text body") };
    assert!(text.starts_with("## missing-idempotency-key\n\n**400.**"), "{text}");
    let unknown = api.handle(request("GET", "/problems/no-such-type", &[], "")).await.unwrap();
    assert_eq!(unknown.status(), 404);
    let whole = api.handle(request("GET", "/problems", &[], "")).await.unwrap();
    assert_eq!(whole.status(), 200);
}
