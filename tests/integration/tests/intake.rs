//! The intake through its real handler with API Gateway HTTP API (v2) events, against
//! LocalStack (DynamoDB, SQS) and, where a charge is involved, the processor and the simulator.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::http::{get_payment, header, parts, payment_body, post_payment, request};
use integration_tests::pipeline::{drive_until_empty, intake, ledger, processor, test_config};
use integration_tests::{aws, own_stack, shared_stack, unique_scope};
use lambda_idempotency::{ClaimOutcome, IdempotencyKey, PayloadHash, RecordStatus};
use payments_core::payment::queue::SqsPaymentQueue;
use payments_core::payment::{PaymentMessage, PaymentQueue, PaymentRequest, intake_key};
use provider_simulator::{SimConfig, Simulator};
use serde_json::json;

async fn queue_messages(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Vec<PaymentMessage> {
    let mut all = Vec::new();
    loop {
        let got = localenv::event_source::receive(sqs, queue_url, 10, 1).await.unwrap();
        if got.is_empty() {
            return all;
        }
        all.extend(got.iter().map(|m| PaymentMessage::parse(m.body().unwrap()).unwrap()));
    }
}

#[tokio::test]
async fn accepted_replayed_and_reused_keys() {
    let sdk = aws().await;
    let stack = own_stack(&sdk, &[]).await;
    let api = intake(&stack, &sdk, &[]);
    let scope = unique_scope("api").to_string();

    let first = api.handle(post_payment(&scope, "order 42/a", &payment_body(1250))).await.unwrap();
    let (status, body) = parts(&first);
    assert_eq!(status, 202);
    assert_eq!(header(&first, "location"), Some("/payments/order%2042%2Fa"));
    assert_eq!(body["status"], "RECEIVED");
    assert_eq!(header(&first, "idempotent-replayed"), None);

    // Same key, same payload (fields in another order): the same 202, marked as a replay.
    let reordered =
        json!({"merchant_reference": "order-1", "payment_method": "pm_card_visa", "currency": "EUR", "amount": 1250});
    let again = api.handle(post_payment(&scope, "order 42/a", &reordered)).await.unwrap();
    assert_eq!(parts(&again), (202, body.clone()));
    assert_eq!(header(&again, "idempotent-replayed"), Some("true"));
    assert_eq!(header(&again, "location"), header(&first, "location"));

    // Same key, different payload: 422, and nothing new is enqueued.
    let reused = api.handle(post_payment(&scope, "order 42/a", &payment_body(9999))).await.unwrap();
    let (status, problem) = parts(&reused);
    assert_eq!(status, 422);
    assert_eq!(problem["type"], format!("{}idempotency-key-reused", intake::problem::DEFAULT_TYPE_BASE));
    assert_eq!(header(&reused, "content-type"), Some("application/problem+json"));

    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queued = queue_messages(&sqs, stack.queue_url()).await;
    assert_eq!(queued.len(), 1, "one message for one payment");
    assert_eq!(queued[0].idempotency_key.as_str(), "order 42/a");
    assert_eq!(queued[0].payment.amount.get(), 1250);

    // The status resource.
    let (status, view) = parts(&api.handle(get_payment(&scope, "order%2042%2Fa")).await.unwrap());
    assert_eq!((status, view["status"].as_str()), (200, Some("RECEIVED")));
    assert_eq!(parts(&api.handle(get_payment(&scope, "unknown")).await.unwrap()).0, 404);
}

#[tokio::test]
async fn bad_requests_get_problem_details() {
    let sdk = aws().await;
    let api = intake(shared_stack(), &sdk, &[]);
    let scope = unique_scope("bad").to_string();
    let check = |response: lambda_http::Response<lambda_http::Body>, status: u16, slug: &str| {
        let (got, problem) = parts(&response);
        assert_eq!(got, status, "{problem}");
        assert_eq!(problem["type"], format!("{}{slug}", intake::problem::DEFAULT_TYPE_BASE));
        assert_eq!(problem["status"], status);
        assert!(problem["correlation_id"].as_str().is_some_and(|c| !c.is_empty()));
        problem
    };
    let json_headers = [("content-type", "application/json")];
    check(
        api.handle(request("POST", "/payments", &json_headers, Some("{}"), Some(&scope))).await.unwrap(),
        400,
        "missing-idempotency-key",
    );
    let long_key = "k".repeat(256);
    check(api.handle(post_payment(&scope, &long_key, &payment_body(1))).await.unwrap(), 400, "invalid-idempotency-key");
    let malformed = request(
        "POST",
        "/payments",
        &[("idempotency-key", "m1"), ("content-type", "application/json")],
        Some("{\"amount\": "),
        Some(&scope),
    );
    check(api.handle(malformed).await.unwrap(), 400, "invalid-request-body");
    let mut typed = payment_body(1);
    typed["amount"] = json!("ten");
    let problem = check(api.handle(post_payment(&scope, "m2", &typed)).await.unwrap(), 400, "invalid-request-body");
    assert_eq!(problem["field"], "amount");
    let problem = check(
        api.handle(post_payment(&scope, "m3", &payment_body(1_000_001))).await.unwrap(),
        400,
        "invalid-request-body",
    );
    assert_eq!(problem["field"], "amount");
    let mut zero = payment_body(1);
    zero["amount"] = json!(0);
    check(api.handle(post_payment(&scope, "m4", &zero)).await.unwrap(), 400, "invalid-request-body");
    let mut currency = payment_body(1);
    currency["currency"] = json!("EURO");
    assert_eq!(
        check(api.handle(post_payment(&scope, "m5", &currency)).await.unwrap(), 400, "invalid-request-body")["field"],
        "currency"
    );
    let mut card = payment_body(1);
    card["payment_method"] = json!("4242 4242 4242 4242");
    let problem = check(api.handle(post_payment(&scope, "m6", &card)).await.unwrap(), 400, "invalid-request-body");
    assert!(!problem.to_string().contains("4242"), "card data is never echoed: {problem}");
    let mut unknown = payment_body(1);
    unknown["card_number"] = json!("4242424242424242");
    let problem = check(api.handle(post_payment(&scope, "m7", &unknown)).await.unwrap(), 400, "invalid-request-body");
    assert!(!problem.to_string().contains("4242424242424242"));
    let oversized =
        json!({"amount": 1, "currency": "EUR", "payment_method": "pm_x", "merchant_reference": "x".repeat(70 * 1024)});
    check(api.handle(post_payment(&scope, "m8", &oversized)).await.unwrap(), 413, "body-too-large");
    let text = request(
        "POST",
        "/payments",
        &[("idempotency-key", "m9"), ("content-type", "text/plain")],
        Some("{}"),
        Some(&scope),
    );
    check(api.handle(text).await.unwrap(), 415, "unsupported-media-type");
    check(
        api.handle(request("DELETE", "/payments/x", &[], None, Some(&scope))).await.unwrap(),
        405,
        "method-not-allowed",
    );
    check(api.handle(request("GET", "/other", &[], None, Some(&scope))).await.unwrap(), 404, "not-found");
    // No identity: 401, unless the local header is allowed (here it is, so use the strict intake).
    let strict = integration_tests::pipeline::intake(shared_stack(), &sdk, &[("ALLOW_SCOPE_HEADER", "false")]);
    let anonymous =
        request("POST", "/payments", &[("idempotency-key", "m10"), ("x-local-scope", "acme")], Some("{}"), None);
    check(strict.handle(anonymous).await.unwrap(), 401, "unauthenticated");
    // Nothing above was accepted.
    assert_eq!(parts(&api.handle(get_payment(&scope, "m1")).await.unwrap()).0, 404);
}

#[tokio::test]
async fn a_key_still_being_accepted_gets_409_with_retry_after() {
    let sdk = aws().await;
    let api = intake(shared_stack(), &sdk, &[]);
    let scope = unique_scope("busy");
    // Another request holds the claim (as if it were between claim and enqueue).
    let payment: PaymentRequest = serde_json::from_value(payment_body(5)).unwrap();
    let key = IdempotencyKey::new("busy-1").unwrap();
    let deadline = api.idempotency().now_ms() + 8_000;
    let claim = api
        .idempotency()
        .claim(&intake_key(&scope, &key), &PayloadHash::of(&payment).unwrap(), deadline)
        .await
        .unwrap();
    assert!(matches!(claim, ClaimOutcome::Claimed(_)));
    let response = api.handle(post_payment(scope.as_str(), "busy-1", &payment_body(5))).await.unwrap();
    let (status, problem) = parts(&response);
    assert_eq!(status, 409);
    assert_eq!(problem["type"], format!("{}request-in-progress", intake::problem::DEFAULT_TYPE_BASE));
    let retry_after: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
    assert!((1..=8).contains(&retry_after), "{retry_after}");
}

/// Claims the intake record as a request that then dies (no completion), with `lease_ms` of
/// lease; returns the claim's time.
async fn claim_as_a_dying_request<S, F, Q>(
    api: &intake::Intake<S, F, Q>,
    scope: &lambda_idempotency::Scope,
    key: &IdempotencyKey,
    payment: &PaymentRequest,
    lease_ms: i64,
) -> i64
where
    S: lambda_idempotency::IdempotencyStore,
    F: payments_core::failures::FailureStore,
    Q: PaymentQueue,
{
    let now = api.idempotency().now_ms();
    let claim = api
        .idempotency()
        .claim(&intake_key(scope, key), &PayloadHash::of(payment).unwrap(), now + lease_ms)
        .await
        .unwrap();
    assert!(matches!(claim, ClaimOutcome::Claimed(_)));
    now
}

#[tokio::test]
async fn a_request_that_died_before_enqueueing_is_enqueued_by_the_client_retry() {
    let sdk = aws().await;
    let stack = own_stack(&sdk, &[]).await;
    let api = intake(&stack, &sdk, &[("INTAKE_LEASE_MS", "1000")]);
    let scope = unique_scope("crash");
    let payment: PaymentRequest = serde_json::from_value(payment_body(7)).unwrap();
    let key = IdempotencyKey::new("crash-1").unwrap();
    // The first request claimed and then died: no message, no completion.
    claim_as_a_dying_request(&api, &scope, &key, &payment, 1_000).await;
    assert_eq!(parts(&api.handle(post_payment(scope.as_str(), "crash-1", &payment_body(7))).await.unwrap()).0, 409);

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let retried = api.handle(post_payment(scope.as_str(), "crash-1", &payment_body(7))).await.unwrap();
    assert_eq!(parts(&retried).0, 202);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queued = queue_messages(&sqs, stack.queue_url()).await;
    assert_eq!(queued.len(), 1);
    let record = api.idempotency().get(&intake_key(&scope, &key)).await.unwrap().unwrap();
    assert_eq!((record.status, record.attempts), (RecordStatus::Completed, 2));
}

#[tokio::test]
async fn a_request_that_died_after_enqueueing_is_enqueued_again_and_charged_once() {
    let sdk = aws().await;
    let stack = own_stack(&sdk, &[]).await;
    let api = intake(&stack, &sdk, &[("INTAKE_LEASE_MS", "1000")]);
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let scope = unique_scope("crash2");
    let payment: PaymentRequest = serde_json::from_value(payment_body(8)).unwrap();
    let key = IdempotencyKey::new("crash-2").unwrap();
    // The first request claimed and enqueued, then died before completing its record.
    let now = claim_as_a_dying_request(&api, &scope, &key, &payment, 1_000).await;
    let message = PaymentMessage {
        schema_version: 1,
        idempotency_key: key.clone(),
        scope: scope.clone(),
        payment,
        created_at: lambda_support::clock::rfc3339_ms(now),
        correlation_id: "first".into(),
    };
    SqsPaymentQueue::new(aws_sdk_sqs::Client::new(&sdk), stack.queue_url()).enqueue(&message).await.unwrap();

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(parts(&api.handle(post_payment(scope.as_str(), "crash-2", &payment_body(8))).await.unwrap()).0, 202);
    let config = test_config(&stack, &sim.base_url(), &[]);
    let p =
        processor(&config, &sdk, payments_core::payment::http_gateway::HttpGateway::new(&config.provider).unwrap(), 1);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    drive_until_empty(&p, &sqs, stack.queue_url(), stack.queue_arn(), Duration::from_secs(40)).await;
    assert_eq!(ledger(&sim.base_url()).await.charges.len(), 1, "two messages, one charge");
    let (_, view) = parts(&api.handle(get_payment(scope.as_str(), "crash-2")).await.unwrap());
    assert_eq!(view["status"], "SUCCEEDED");
}

#[tokio::test]
async fn fifty_concurrent_identical_posts_make_one_payment_and_one_charge() {
    let sdk = aws().await;
    let stack = own_stack(&sdk, &[]).await;
    let api = Arc::new(intake(&stack, &sdk, &[]));
    let scope = unique_scope("storm").to_string();
    let posts = (0..50).map(|_| {
        let (api, scope) = (api.clone(), scope.clone());
        tokio::spawn(async move {
            parts(&api.handle(post_payment(&scope, "storm-1", &payment_body(4200))).await.unwrap()).0
        })
    });
    let statuses: Vec<u16> = futures::future::join_all(posts).await.into_iter().map(Result::unwrap).collect();
    assert!(statuses.iter().all(|s| *s == 202 || *s == 409), "{statuses:?}");
    assert!(statuses.contains(&202));

    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let config = test_config(&stack, &sim.base_url(), &[]);
    let p =
        processor(&config, &sdk, payments_core::payment::http_gateway::HttpGateway::new(&config.provider).unwrap(), 3);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let summaries = drive_until_empty(&p, &sqs, stack.queue_url(), stack.queue_arn(), Duration::from_secs(30)).await;
    let messages: usize = summaries.iter().map(|s| s.handled.len()).sum();
    assert_eq!(messages, 1, "one payment record, one message");
    assert_eq!(ledger(&sim.base_url()).await.charges.len(), 1, "one charge at the provider");
}

#[tokio::test]
async fn scopes_are_isolated_and_statuses_follow_the_payment() {
    let sdk = aws().await;
    let stack = own_stack(&sdk, &[]).await;
    let api = intake(&stack, &sdk, &[]);
    let (a, b) = (unique_scope("tenant-a").to_string(), unique_scope("tenant-b").to_string());
    assert_eq!(parts(&api.handle(post_payment(&a, "shared", &payment_body(100))).await.unwrap()).0, 202);
    // Another caller cannot see it...
    assert_eq!(parts(&api.handle(get_payment(&b, "shared")).await.unwrap()).0, 404);
    // ...and its own use of the key is its own payment, even with another payload.
    let theirs = api.handle(post_payment(&b, "shared", &payment_body(999))).await.unwrap();
    assert_eq!(header(&theirs, "idempotent-replayed"), None);
    assert_eq!(parts(&theirs).0, 202);
    let mut declined = payment_body(300);
    declined["payment_method"] = json!("pm_card_insufficient_funds");
    assert_eq!(parts(&api.handle(post_payment(&a, "declined", &declined)).await.unwrap()).0, 202);

    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let config = test_config(&stack, &sim.base_url(), &[]);
    let p =
        processor(&config, &sdk, payments_core::payment::http_gateway::HttpGateway::new(&config.provider).unwrap(), 3);
    drive_until_empty(
        &p,
        &aws_sdk_sqs::Client::new(&sdk),
        stack.queue_url(),
        stack.queue_arn(),
        Duration::from_secs(30),
    )
    .await;

    let (status, view) = parts(&api.handle(get_payment(&a, "shared")).await.unwrap());
    assert_eq!(
        (status, view["status"].as_str(), view["charge"]["amount"].as_u64()),
        (200, Some("SUCCEEDED"), Some(100))
    );
    let (_, view) = parts(&api.handle(get_payment(&b, "shared")).await.unwrap());
    assert_eq!(view["charge"]["amount"], 999);
    let (_, view) = parts(&api.handle(get_payment(&a, "declined")).await.unwrap());
    assert_eq!(view["status"], "FAILED");
    assert!(view["reason"].as_str().unwrap().contains("insufficient_funds"), "{view}");
    // A replay now reports the current status.
    let (_, replay) = parts(&api.handle(post_payment(&a, "shared", &payment_body(100))).await.unwrap());
    assert_eq!(replay["status"], "SUCCEEDED");
}
