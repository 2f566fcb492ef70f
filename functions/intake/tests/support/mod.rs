//! What the intake's test files share: the handler over in-memory adapters, and requests.

use std::collections::HashMap;

use intake::{Intake, IntakeConfig};
use lambda_http::{Body, Request};
use lambda_idempotency::memory::InMemoryStore;
use lambda_support::env::Env;
use payments_core::failures::memory::InMemoryFailureStore;
use payments_core::payment::PaymentQueue;

/// A local configuration: the scope comes from `X-Local-Scope`.
pub fn config() -> IntakeConfig {
    let vars: HashMap<&str, &str> = [
        ("IDEMPOTENCY_TABLE", "t"),
        ("FAILURES_TABLE", "f"),
        ("PAYMENTS_QUEUE_URL", "q"),
        ("ALLOW_SCOPE_HEADER", "true"),
    ]
    .into();
    IntakeConfig::from_env(&Env::from_lookup(move |n| vars.get(n).map(|v| (*v).to_owned()))).unwrap()
}

/// The intake over `store` and `queue`.
pub fn intake_on<Q: PaymentQueue>(store: InMemoryStore, queue: Q) -> Intake<InMemoryStore, InMemoryFailureStore, Q> {
    Intake::new(store, InMemoryFailureStore::default(), queue, config())
}

/// A request as API Gateway hands it over.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
    let mut builder = lambda_http::http::Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::Text(body.to_owned())).unwrap()
}

/// A request as API Gateway hands it over from a SigV4-signed caller of AWS account `account`
/// (an IAM-authorized route: the authorizer context carries the account). Not every test file
/// that shares this module calls it.
#[allow(dead_code)]
pub fn from_account(account: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
    let headers: serde_json::Map<String, serde_json::Value> =
        headers.iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v))).collect();
    let event = serde_json::json!({
        "version": "2.0", "routeKey": format!("{method} {path}"), "rawPath": path, "rawQueryString": "",
        "headers": headers, "body": body, "isBase64Encoded": false,
        "requestContext": {
            "accountId": "000000000000", "apiId": "api", "domainName": "api.example", "domainPrefix": "api",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "t"},
            "requestId": "r-1", "routeKey": format!("{method} {path}"), "stage": "$default",
            "time": "27/Nov/2026:10:00:00 +0000", "timeEpoch": 1_795_000_000_000_i64,
            "authorizer": {"iam": {"accessKey": "AKIAEXAMPLE", "accountId": account, "callerId": "AKIAEXAMPLE",
                                   "userArn": format!("arn:aws:iam::{account}:user/payer"), "userId": "AKIAEXAMPLE"}}
        }
    });
    lambda_http::request::from_str(&event.to_string()).expect("a valid API Gateway v2 event")
}
