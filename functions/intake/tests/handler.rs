//! Fast tests of the intake's error paths with in-memory adapters (the LocalStack tests cover the
//! rest through the same handler).

use intake::Intake;
use lambda_http::{Body, Request};
use payments_core::failures::memory::InMemoryFailureStore;
use payments_core::idempotency::memory::InMemoryStore;
use payments_core::payment::queue::InMemoryPaymentQueue;
use payments_core::payment::{EnqueueError, PaymentMessage, PaymentQueue};
use serde_json::{Value, json};

mod support;
use support::{intake_on, request};

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
    assert_eq!(json_of(&failed)["type"], format!("{}service-unavailable", intake::problem::TYPE_BASE));

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
