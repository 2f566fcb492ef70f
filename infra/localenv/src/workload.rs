//! The workload the main job submits through the intake over HTTP: payments (some declined,
//! some scripted to exhaust their retries), client retries, concurrent duplicates, key reuse
//! with a different payload, and poison messages sent straight to the queue. Deterministic for a
//! seed.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

/// What to submit.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSpec {
    /// Distinct payments.
    pub payments: usize,
    /// Share declined by the provider (FAILED).
    pub decline_rate: f64,
    /// Share re-submitted by the client after its 202 (replays).
    pub client_retry_rate: f64,
    /// Payments submitted three times at once (202 or 409 each).
    pub concurrent_duplicates: usize,
    /// Payments re-submitted with another amount (422).
    pub key_reuses: usize,
    /// Payments scripted to fail every attempt with a 409 (DEAD_LETTERED by their retry budget).
    pub dead_letters: usize,
    /// Payments scripted with commit-then-timeout on their first attempt.
    pub commit_timeouts: usize,
    /// Raw invalid messages sent straight to the queue.
    pub poison: usize,
    /// Payments whose acceptance is left as an intake that died right after its claim (never
    /// enqueued, never answered): the completer must find and finish them.
    pub abandoned: usize,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        Self {
            payments: 150,
            decline_rate: 0.06,
            client_retry_rate: 0.2,
            concurrent_duplicates: 10,
            key_reuses: 5,
            dead_letters: 3,
            commit_timeouts: 5,
            poison: 3,
            abandoned: 3,
            seed: 42,
        }
    }
}

/// One planned payment.
#[derive(Debug, Clone)]
pub struct PlannedPayment {
    /// Caller.
    pub scope: String,
    /// Client key.
    pub key: String,
    /// The JSON body.
    pub body: Value,
}

impl PlannedPayment {
    /// Amount in minor units.
    pub fn amount(&self) -> u64 {
        self.body["amount"].as_u64().unwrap_or(0)
    }
}

/// The whole plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every distinct payment.
    pub payments: Vec<PlannedPayment>,
    /// Indexes re-submitted after their 202.
    pub client_retries: Vec<usize>,
    /// Indexes submitted three times concurrently.
    pub concurrent: Vec<usize>,
    /// Indexes re-submitted with another amount.
    pub reused: Vec<usize>,
    /// Raw poison bodies.
    pub poison: Vec<String>,
    /// Indexes never submitted over HTTP: left as abandoned acceptances for the completer.
    pub abandoned: Vec<usize>,
}

/// Builds the plan for `spec`. `max_provider_attempts` sizes the dead-letter scripts: a 409 on
/// every attempt, a failure of that one payment (the provider is up), so its retry budget runs
/// out while the circuit stays closed.
pub fn plan(spec: &WorkloadSpec, max_provider_attempts: u32) -> Plan {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let run = format!("{:08x}", rng.random::<u32>());
    let payments: Vec<PlannedPayment> =
        (0..spec.payments).map(|i| planned_payment(i, spec, max_provider_attempts, &run, &mut rng)).collect();
    let first_abandoned = payments.len() - spec.abandoned.min(payments.len());
    let mut pick = |count: usize, from: usize| -> Vec<usize> {
        let mut chosen: Vec<usize> = (from..first_abandoned.max(from)).collect();
        for i in 0..chosen.len() {
            let j = rng.random_range(i..chosen.len());
            chosen.swap(i, j);
        }
        chosen.truncate(count);
        chosen
    };
    let first_regular = spec.dead_letters + spec.commit_timeouts;
    let retries = ((payments.len() - first_regular.min(payments.len())) as f64 * spec.client_retry_rate) as usize;
    Plan {
        client_retries: pick(retries, first_regular),
        concurrent: pick(spec.concurrent_duplicates, first_regular),
        reused: pick(spec.key_reuses, first_regular),
        poison: (0..spec.poison).map(|i| poison_body(i, &run)).collect(),
        abandoned: (first_abandoned..payments.len()).collect(),
        payments,
    }
}

/// Payment `i` of run `run`: the first ones scripted to dead-letter or to time out after the
/// provider committed, the rest declined at `spec.decline_rate`.
fn planned_payment(
    i: usize,
    spec: &WorkloadSpec,
    max_provider_attempts: u32,
    run: &str,
    rng: &mut StdRng,
) -> PlannedPayment {
    // Callers as the deployed API knows them: two AWS accounts signing with SigV4 (the first's ID
    // passes the Luhn check, as about one account in ten does) and a JWT authorizer's tenant.
    const SCOPES: [&str; 3] = ["405608656907", "945807302157", "merchant-west"];
    const CURRENCIES: [&str; 4] = ["EUR", "USD", "GBP", "JPY"];
    let mut metadata = serde_json::Map::new();
    let method = if i < spec.dead_letters {
        let script = vec!["409"; max_provider_attempts as usize + 1].join(",");
        metadata.insert("simulate".into(), Value::from(script));
        "pm_card_visa"
    } else if i < spec.dead_letters + spec.commit_timeouts {
        metadata.insert("simulate".into(), Value::from("commit_then_timeout"));
        "pm_card_visa"
    } else if rng.random_bool(spec.decline_rate) {
        "pm_card_insufficient_funds"
    } else {
        "pm_card_visa"
    };
    metadata.insert("run".into(), Value::from(run));
    PlannedPayment {
        scope: SCOPES[i % SCOPES.len()].to_owned(),
        key: format!("pay-{run}-{i:05}"),
        body: json!({
            "amount": rng.random_range(100..250_000u64),
            "currency": CURRENCIES[rng.random_range(0..CURRENCIES.len())],
            "payment_method": method,
            "merchant_reference": format!("order-{i:05}"),
            "metadata": metadata,
        }),
    }
}

/// Poison message `i`: not JSON, an invalid payment under a readable key, or a schema version
/// from the future, in turn.
fn poison_body(i: usize, run: &str) -> String {
    match i % 3 {
        0 => "this is not JSON".to_owned(),
        1 => json!({"schema_version": 1, "idempotency_key": format!("poison-{run}-{i}"), "scope": "merchant-north",
                    "payment": {"amount": -5}, "created_at": "2026-01-01T00:00:00Z", "correlation_id": "p"})
        .to_string(),
        _ => json!({"schema_version": 99, "note": "a message from the future"}).to_string(),
    }
}

/// What the intake answered.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    /// Payments their client was told were accepted (202 at least once), by (scope, key): their
    /// amount. What the intake recorded is in its records: a client answered 503 may still have
    /// had its payment accepted.
    pub accepted: BTreeMap<(String, String), u64>,
    /// Responses by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// 202s marked as replays.
    pub replays: u64,
    /// Requests that failed to get any answer.
    pub transport_errors: u64,
    /// How long each answer took, milliseconds (every request, 503s and retries included).
    pub latencies_ms: Vec<f64>,
}

impl Submission {
    /// The `p`th percentile of the intake's answer times, milliseconds.
    pub fn latency_percentile(&self, p: f64) -> Option<f64> {
        percentile(&self.latencies_ms, p)
    }
}

/// The `p`th percentile (nearest rank) of `values`.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// How often a client asks again before it leaves the payment to a status read.
const MAX_TRIES: u32 = 30;

/// Submits the plan through the intake at `intake_url` (`…/payments`), `parallelism` at a time.
/// A client answered 503 comes back after its `Retry-After`, as a well-behaved client does.
pub async fn submit(plan: &Plan, intake_url: &str, parallelism: usize) -> Submission {
    use futures::StreamExt;
    let client = reqwest::Client::new();
    let result = tokio::sync::Mutex::new(Submission::default());
    let post = |payment: PlannedPayment, body: Value| post_until_answered(&client, intake_url, payment, body, &result);
    // First submissions, with the concurrent duplicates fired three at a time.
    let mut requests = Vec::new();
    for (i, payment) in plan.payments.iter().enumerate().filter(|(i, _)| !plan.abandoned.contains(i)) {
        let copies = if plan.concurrent.contains(&i) { 3 } else { 1 };
        for _ in 0..copies {
            requests.push(post(payment.clone(), payment.body.clone()));
        }
    }
    futures::stream::iter(requests).buffer_unordered(parallelism.max(1)).collect::<Vec<()>>().await;
    // Client retries of accepted payments, and key reuse with a different amount.
    let mut later = Vec::new();
    for &i in &plan.client_retries {
        later.push(post(plan.payments[i].clone(), plan.payments[i].body.clone()));
    }
    for &i in &plan.reused {
        let mut body = plan.payments[i].body.clone();
        body["amount"] = Value::from(plan.payments[i].amount() + 1);
        later.push(post(plan.payments[i].clone(), body));
    }
    futures::stream::iter(later).buffer_unordered(parallelism.max(1)).collect::<Vec<()>>().await;
    result.into_inner()
}

/// Posts one payment as a careful client does: until the intake gives an answer that settles it
/// (`202`, or a refusal of the request itself), it comes back with the same key after a `503`,
/// a `409` (the first request with the key still being accepted), a `500` or no answer at all,
/// waiting each `Retry-After`. Every answer is counted.
async fn post_until_answered(
    client: &reqwest::Client,
    url: &str,
    payment: PlannedPayment,
    body: Value,
    result: &tokio::sync::Mutex<Submission>,
) {
    for _ in 0..MAX_TRIES {
        let started = std::time::Instant::now();
        let request = client.post(url).header("Idempotency-Key", &payment.key).json(&body).build();
        let response = match request {
            Ok(request) => client.execute(crate::caller::identified(request, &payment.scope)).await,
            Err(e) => Err(e),
        };
        let mut result = result.lock().await;
        result.latencies_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let Ok(response) = response else {
            result.transport_errors += 1;
            drop(result);
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        };
        let status = response.status().as_u16();
        *result.statuses.entry(status).or_default() += 1;
        if response.headers().contains_key("idempotent-replayed") {
            result.replays += 1;
        }
        if status == 202 {
            result.accepted.insert((payment.scope.clone(), payment.key.clone()), payment.amount());
        }
        if !matches!(status, 409 | 500 | 503) {
            return;
        }
        drop(result);
        let wait = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
        tokio::time::sleep(std::time::Duration::from_secs(wait.unwrap_or(1))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_deterministic_and_distinct_in_their_keys() {
        let spec = WorkloadSpec::default();
        let (a, b) = (plan(&spec, 5), plan(&spec, 5));
        assert_eq!(
            a.payments.iter().map(|p| &p.body).collect::<Vec<_>>(),
            b.payments.iter().map(|p| &p.body).collect::<Vec<_>>()
        );
        let keys: std::collections::BTreeSet<_> = a.payments.iter().map(|p| &p.key).collect();
        assert_eq!(keys.len(), spec.payments);
        assert_eq!(a.payments[0].body["metadata"]["simulate"], "409,409,409,409,409,409");
        assert!(a.reused.iter().all(|i| *i >= spec.dead_letters + spec.commit_timeouts));
        assert_eq!(a.poison.len(), 3);
        assert_eq!(a.abandoned, vec![147, 148, 149]);
        for chosen in [&a.client_retries, &a.concurrent, &a.reused] {
            assert!(chosen.iter().all(|i| !a.abandoned.contains(i)), "abandoned payments are never submitted");
        }
    }
}
