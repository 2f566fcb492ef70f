//! The intake's real answers checked against its description, `docs/openapi.json` (OpenAPI 3.1):
//! every status it answers is documented for its operation, with the documented content type,
//! a body valid against the documented schema, the required headers present and no undocumented
//! header among the API's own.

use lambda_http::{Body, Request, Response};

mod support;
use lambda_idempotency::memory::InMemoryStore;
use lambda_idempotency::{IdempotencyKey, PayloadHash, Scope};
use payments_core::payment::envelope::parse_strict;
use payments_core::payment::queue::InMemoryPaymentQueue;
use payments_core::payment::{EnqueueError, PaymentRequest, intake_key};
use serde_json::{Value, json};
use support::{intake_on, request};

const SPEC: &str = include_str!("../../../docs/openapi.json");

/// The headers this API sets itself (the rest belong to HTTP or API Gateway).
const API_HEADERS: [&str; 5] = ["location", "idempotent-replayed", "retry-after", "allow", "x-correlation-id"];

fn payment(amount: u64) -> Value {
    json!({"amount": amount, "currency": "EUR", "payment_method": "pm_card_visa", "merchant_reference": "o-1",
           "metadata": {"channel": "web"}})
}

fn post(key: &str, body: &Value) -> Request {
    let headers = [("idempotency-key", key), ("x-local-scope", "acme"), ("content-type", "application/json")];
    request("POST", "/payments", &headers, &body.to_string())
}

fn get(key: &str) -> Request {
    request("GET", &format!("/payments/{key}"), &[("x-local-scope", "acme")], "")
}

/// Checks `response` against the spec's `path` / `method`; returns the status.
fn check(spec: &Value, path: &str, method: &str, response: &Response<Body>) -> u16 {
    let status = response.status().as_u16();
    let documented = &spec["paths"][path][method]["responses"][status.to_string()];
    assert!(documented.is_object(), "{method} {path} answered {status}, which the spec does not document");
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = &documented["content"][content_type];
    assert!(media.is_object(), "{method} {path} {status}: content type {content_type:?} not documented");
    let body: Value = match response.body() {
        Body::Text(text) => serde_json::from_str(text).unwrap(),
        other => panic!("unexpected body {other:?}"),
    };
    // The schema is validated with the whole document as its root, so that `#/components/…`
    // references resolve.
    let mut schema = spec.clone();
    schema["$ref"] = media["schema"]["$ref"].clone();
    let validator = jsonschema::validator_for(&schema).expect("the spec's schemas compile");
    let errors: Vec<String> = validator.iter_errors(&body).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{method} {path} {status}: {body} does not match its schema: {errors:?}");
    let headers = documented["headers"].as_object().cloned().unwrap_or_default();
    let header_spec = |name: &str| {
        headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| {
            v.get("$ref")
                .and_then(Value::as_str)
                .map_or(v.clone(), |r| spec.pointer(&r[1..]).cloned().unwrap_or(Value::Null))
        })
    };
    for name in API_HEADERS {
        if response.headers().contains_key(name) {
            assert!(header_spec(name).is_some(), "{method} {path} {status}: header {name} not documented");
        }
    }
    for (name, _) in &headers {
        if header_spec(name).is_some_and(|h| h["required"] == true) {
            assert!(response.headers().contains_key(name.to_ascii_lowercase().as_str()), "{status}: {name} missing");
        }
    }
    status
}

#[tokio::test]
async fn every_answer_of_the_intake_is_described_by_its_openapi_document() {
    let spec: Value = serde_json::from_str(SPEC).unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    let queue = InMemoryPaymentQueue::default();
    let api = intake_on(InMemoryStore::new(), queue.clone());
    let mut seen = Vec::new();
    let mut expect = |path: &str, method: &str, response: Response<Body>, status: u16| {
        assert_eq!(check(&spec, path, method, &response), status, "{method} {path}");
        seen.push((method.to_owned(), status));
    };

    expect("/payments", "post", api.handle(post("order-1", &payment(1250))).await.unwrap(), 202);
    let replay = api.handle(post("order-1", &payment(1250))).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    expect("/payments", "post", replay, 202);
    expect("/payments/{key}", "get", api.handle(get("order-1")).await.unwrap(), 200);
    expect("/payments/{key}", "get", api.handle(get("order-404")).await.unwrap(), 404);
    expect("/payments/{key}", "get", api.handle(get(&"k".repeat(300))).await.unwrap(), 400);
    expect("/payments/{key}", "get", api.handle(request("GET", "/payments/order-1", &[], "")).await.unwrap(), 401);
    let put = request("PUT", "/payments/order-1", &[("x-local-scope", "acme")], "");
    expect("/payments/{key}", "get", api.handle(put).await.unwrap(), 405);

    let no_key = request("POST", "/payments", &[("x-local-scope", "acme")], &payment(5).to_string());
    expect("/payments", "post", api.handle(no_key).await.unwrap(), 400);
    expect("/payments", "post", api.handle(post("order-2", &json!({"amount": -1}))).await.unwrap(), 400);
    let anonymous = request("POST", "/payments", &[("idempotency-key", "order-3")], &payment(5).to_string());
    expect("/payments", "post", api.handle(anonymous).await.unwrap(), 401);
    expect("/payments", "post", api.handle(request("DELETE", "/payments", &[], "")).await.unwrap(), 405);
    let huge =
        json!({"amount": 5, "currency": "EUR", "payment_method": "pm_x", "merchant_reference": "x".repeat(70_000)});
    expect("/payments", "post", api.handle(post("order-4", &huge)).await.unwrap(), 413);
    let text = [("idempotency-key", "order-5"), ("x-local-scope", "acme"), ("content-type", "text/plain")];
    expect("/payments", "post", api.handle(request("POST", "/payments", &text, "hello")).await.unwrap(), 415);
    expect("/payments", "post", api.handle(post("order-1", &payment(999))).await.unwrap(), 422);

    // A first request with this key still being accepted: 409 with Retry-After.
    let (scope, key) = (Scope::new("acme").unwrap(), IdempotencyKey::new("order-6").unwrap());
    let same: PaymentRequest = parse_strict(&payment(5).to_string()).unwrap();
    let hash = PayloadHash::of(&same).unwrap();
    let until = api.idempotency().now_ms() + 5_000;
    api.idempotency().claim(&intake_key(&scope, &key), &hash, until).await.unwrap();
    expect("/payments", "post", api.handle(post("order-6", &payment(5))).await.unwrap(), 409);

    queue.fail_with(Some(EnqueueError { retryable: true, detail: "SQS throttled".into() }));
    expect("/payments", "post", api.handle(post("order-7", &payment(5))).await.unwrap(), 503);

    expect("/problems/{slug}", "get", api.handle(request("GET", "/problems/nope", &[], "")).await.unwrap(), 404);
    let docs = api.handle(request("GET", "/problems/not-found", &[], "")).await.unwrap();
    let documented = &spec["paths"]["/problems/{slug}"]["get"]["responses"]["200"]["content"];
    let content_type = docs.headers()["content-type"].to_str().unwrap();
    assert!(documented[content_type].is_object(), "the documentation's {content_type} is documented");

    let statuses: std::collections::BTreeSet<u16> = seen.iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses.len(), 11, "every documented answer but 500 exercised: {statuses:?}");
}

/// Bodies at the edges of every limit the request schema states, each a valid payment with one
/// field changed: integers at and beside their bounds, strings and metadata grown one character
/// at a time past their lengths, text in another case. Generated from the schema's own keywords,
/// so a limit changed on one side only is found.
fn edge_cases(schema: &Value) -> Vec<Value> {
    let base = payment(1250);
    let mut cases = vec![base.clone()];
    let with = |field: &str, value: Value| {
        let mut case = base.clone();
        case[field] = value;
        case
    };
    for (field, rule) in schema["properties"].as_object().expect("the schema lists its properties") {
        if let Some(min) = rule["minimum"].as_i64() {
            cases.extend([min - 1, min].map(|n| with(field, json!(n))));
        }
        if let Some(max) = rule["maximum"].as_i64() {
            cases.extend([max, max + 1].map(|n| with(field, json!(n))));
        }
        if let Some(text) = base[field].as_str() {
            let longest = rule["maxLength"].as_u64().unwrap_or(130) as usize + 2;
            cases.extend((0..=longest).map(|n| with(field, json!(text.chars().take(n).collect::<String>()))));
            cases.extend((0..=longest).map(|n| with(field, json!(format!("{text}{}", "a".repeat(n))))));
            cases.extend([text.to_lowercase(), text.to_uppercase()].map(|t| with(field, json!(t))));
        }
        if rule["type"] == "object" {
            let entries = rule["maxProperties"].as_u64().unwrap_or(20) as usize;
            let name_max = rule["propertyNames"]["maxLength"].as_u64().unwrap_or(40) as usize;
            let value_max = rule["additionalProperties"]["maxLength"].as_u64().unwrap_or(500) as usize;
            let map = |pairs: Vec<(String, String)>| {
                with(field, Value::Object(pairs.into_iter().map(|(k, v)| (k, json!(v))).collect()))
            };
            cases.extend((0..=entries + 1).map(|n| map((0..n).map(|i| (format!("k{i}"), "v".into())).collect())));
            cases.extend((0..=name_max + 1).map(|n| map(vec![("k".repeat(n), "v".into())])));
            cases.extend((0..=value_max + 1).map(|n| map(vec![("k".into(), "v".repeat(n))])));
        }
    }
    cases
}

/// The request schema and the handler agree on every edge case: the schema accepts exactly the
/// bodies the handler answers `202`. (What the schema cannot say — a code that ISO 4217 lacks,
/// card data, control characters — is refused by the handler alone, as its descriptions state;
/// the cases stay clear of those.)
#[tokio::test]
async fn the_request_schema_and_the_handler_agree_at_every_limit() {
    let spec: Value = serde_json::from_str(SPEC).unwrap();
    let mut schema = spec.clone();
    schema["$ref"] = json!("#/components/schemas/PaymentRequest");
    let validator = jsonschema::validator_for(&schema).expect("the request schema compiles");
    let api = intake_on(InMemoryStore::new(), InMemoryPaymentQueue::default());
    let cases = edge_cases(&spec["components"]["schemas"]["PaymentRequest"]);
    assert!(cases.len() > 1_000, "{} cases", cases.len());
    let (mut accepted, mut refused) = (0, 0);
    for (i, body) in cases.iter().enumerate() {
        let status = api.handle(post(&format!("edge-{i}"), body)).await.unwrap().status().as_u16();
        let valid = validator.is_valid(body);
        let expected = if valid { 202 } else { 400 };
        assert_eq!(
            status,
            expected,
            "the schema says {}, the handler {status}: {body}",
            if valid { "valid" } else { "invalid" }
        );
        if valid { accepted += 1 } else { refused += 1 }
    }
    assert!(accepted > 100 && refused > 100, "both sides of every limit: {accepted} accepted, {refused} refused");
}
