//! What the intake's test files share: the handler over in-memory adapters, and requests.

use std::collections::HashMap;

use intake::{Intake, IntakeConfig};
use lambda_http::{Body, Request};
use payments_core::config::Env;
use payments_core::failures::memory::InMemoryFailureStore;
use payments_core::idempotency::memory::InMemoryStore;
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
