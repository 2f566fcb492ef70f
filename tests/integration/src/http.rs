//! API Gateway HTTP API (payload v2) requests for the intake handler, as API Gateway would send
//! them.

use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};

/// A v2 request event. `scope`, when given, arrives as a Lambda authorizer's context.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>, scope: Option<&str>) -> Request {
    let headers: serde_json::Map<String, Value> =
        headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), Value::from(*v))).collect();
    let mut context = json!({
        "accountId": "123456789012", "apiId": "api", "domainName": "api.example", "domainPrefix": "api",
        "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "tests"},
        "requestId": format!("req-{}", uuid()), "routeKey": "$default", "stage": "$default",
        "time": "27/Nov/2026:10:00:00 +0000", "timeEpoch": 1_795_000_000_000_i64
    });
    if let Some(scope) = scope {
        context["authorizer"] = json!({"lambda": {"scope": scope}});
    }
    let event = json!({
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": headers, "requestContext": context, "body": body, "isBase64Encoded": false
    });
    lambda_http::request::from_str(&event.to_string()).expect("valid API Gateway v2 event")
}

/// A JSON POST of a payment with an Idempotency-Key, from `scope`.
pub fn post_payment(scope: &str, key: &str, body: &Value) -> Request {
    request(
        "POST",
        "/payments",
        &[("idempotency-key", key), ("content-type", "application/json")],
        Some(&body.to_string()),
        Some(scope),
    )
}

/// A status query from `scope`.
pub fn get_payment(scope: &str, encoded_key: &str) -> Request {
    request("GET", &format!("/payments/{encoded_key}"), &[], None, Some(scope))
}

/// A valid payment body.
pub fn payment_body(amount: u64) -> Value {
    json!({"amount": amount, "currency": "EUR", "payment_method": "pm_card_visa", "merchant_reference": "order-1"})
}

/// Status, a header and the JSON body of a response.
pub fn parts(response: &Response<Body>) -> (u16, Value) {
    let body = match response.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap_or(Value::Null),
        Body::Binary(b) => serde_json::from_slice(b).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (response.status().as_u16(), body)
}

/// A header's value.
pub fn header<'a>(response: &'a Response<Body>, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

fn uuid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}
