//! The simulator over real HTTP on loopback: idempotency, key reuse, declines and faults.

use std::time::Duration;

use provider_simulator::{LedgerSnapshot, SimConfig, Simulator};
use serde_json::{Value, json};

async fn post(client: &reqwest::Client, base: &str, key: &str, body: &Value) -> Result<(u16, Value), reqwest::Error> {
    let response = client.post(format!("{base}/v1/charges")).header("Idempotency-Key", key).json(body).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

async fn ledger(client: &reqwest::Client, base: &str) -> LedgerSnapshot {
    client.get(format!("{base}/ledger")).send().await.unwrap().json().await.unwrap()
}

fn charge(amount: u64, metadata: Value) -> Value {
    json!({"amount": amount, "currency": "eur", "payment_method": "pm_card_visa", "description": "o-1", "metadata": metadata})
}

#[tokio::test]
async fn same_key_and_body_replays_the_first_charge_and_another_body_is_refused() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let client = reqwest::Client::new();
    let (s1, b1) = post(&client, &sim.base_url(), "k1", &charge(100, json!({}))).await.unwrap();
    let (s2, b2) = post(&client, &sim.base_url(), "k1", &charge(100, json!({}))).await.unwrap();
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(b1["id"], b2["id"]);
    let (s3, b3) = post(&client, &sim.base_url(), "k1", &charge(200, json!({}))).await.unwrap();
    assert_eq!(s3, 422);
    assert_eq!(b3["error"]["code"], "idempotency_key_reused");
    let ledger = ledger(&client, &sim.base_url()).await;
    assert_eq!(ledger.charges.len(), 1);
    assert_eq!((ledger.requests, ledger.replays, ledger.key_reuses), (3, 1, 1));
}

#[tokio::test]
async fn commit_then_timeout_charges_once_and_the_retry_gets_that_charge() {
    let sim = Simulator::start(SimConfig { commit_delay_ms: 2_000, ..SimConfig::default() }).await.unwrap();
    let client = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let body = charge(100, json!({"simulate": "commit_then_timeout"}));
    let first = post(&client, &sim.base_url(), "k2", &body).await;
    assert!(first.unwrap_err().is_timeout(), "the client must give up first");
    let (status, retry) = post(&client, &sim.base_url(), "k2", &body).await.unwrap();
    assert_eq!(status, 200);
    let ledger = ledger(&client, &sim.base_url()).await;
    assert_eq!(ledger.charges.len(), 1);
    assert_eq!(ledger.charges[0].id, retry["id"]);
}

#[tokio::test]
async fn scripted_faults_apply_in_order_then_the_charge_goes_through() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let client = reqwest::Client::new();
    let body = charge(100, json!({"simulate": "500,503,429,connection_reset"}));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post(&client, &sim.base_url(), "k3", &body).await.unwrap().0);
    }
    assert_eq!(statuses, [500, 503, 429]);
    assert!(post(&client, &sim.base_url(), "k3", &body).await.is_err(), "connection reset");
    assert_eq!(post(&client, &sim.base_url(), "k3", &body).await.unwrap().0, 200);
    let ledger = ledger(&client, &sim.base_url()).await;
    assert_eq!(ledger.charges.len(), 1);
    assert_eq!(ledger.requests_by_key["k3"], 5);
    assert_eq!(ledger.faults.values().sum::<u64>(), 4);
}

#[tokio::test]
async fn declines_are_stored_and_replayed() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let client = reqwest::Client::new();
    let body = json!({"amount": 5, "currency": "eur", "payment_method": "pm_card_insufficient_funds"});
    let (status, first) = post(&client, &sim.base_url(), "k4", &body).await.unwrap();
    assert_eq!(status, 402);
    assert_eq!(first["error"]["decline_code"], "insufficient_funds");
    assert_eq!(post(&client, &sim.base_url(), "k4", &body).await.unwrap(), (402, first));
    assert!(ledger(&client, &sim.base_url()).await.charges.is_empty());
}

#[tokio::test]
async fn a_request_while_the_first_is_in_flight_gets_409() {
    let sim = Simulator::start(SimConfig { latency_ms: 500, ..SimConfig::default() }).await.unwrap();
    let client = reqwest::Client::new();
    let slow = charge(100, json!({"simulate": "latency"}));
    let base = sim.base_url();
    let first = tokio::spawn({
        let (client, base, slow) = (client.clone(), base.clone(), slow.clone());
        async move { post(&client, &base, "k5", &slow).await.unwrap().0 }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(post(&client, &base, "k5", &slow).await.unwrap().0, 409);
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(ledger(&client, &base).await.charges.len(), 1);
}

#[tokio::test]
async fn lookups_find_a_charge_by_key_or_reference_and_answer_409_while_the_key_is_in_flight() {
    let sim = Simulator::start(SimConfig { latency_ms: 600, ..SimConfig::default() }).await.unwrap();
    let client = reqwest::Client::new();
    let base = sim.base_url();
    let list = |query: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let response = client.get(format!("{base}/v1/charges?{query}")).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // A slow charge: while it runs, a lookup by its key cannot say.
    let slow = tokio::spawn({
        let (client, base) = (client.clone(), base.clone());
        async move { post(&client, &base, "k-look", &charge(700, json!({"simulate": "latency"}))).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(list("idempotency_key=k-look").await.0, 409);
    let (status, charged) = slow.await.unwrap();
    assert_eq!(status, 200);
    let (status, by_key) = list("idempotency_key=k-look").await;
    assert_eq!((status, by_key["data"][0]["id"].clone()), (200, charged["id"].clone()));
    assert_eq!(list("merchant_reference=o-1").await.1["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(list("idempotency_key=never-sent").await.1["data"], json!([]));
    assert_eq!(list("").await.0, 400);
    assert_eq!(ledger(&client, &base).await.lookups, 4, "the malformed one is not a lookup");
}

#[tokio::test]
async fn a_capacity_set_at_runtime_refuses_the_excess_with_429_and_retry_after_and_reports_the_peaks() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let client = reqwest::Client::new();
    let mut config: Value =
        client.get(format!("{}/_sim/config", sim.base_url())).send().await.unwrap().json().await.unwrap();
    config["capacity"] = json!({"rate_per_s": 4});
    let put = client.put(format!("{}/_sim/config", sim.base_url())).json(&config).send().await.unwrap();
    assert_eq!(put.status(), 200);

    let mut answers = Vec::new();
    for i in 0..10 {
        let response = client
            .post(format!("{}/v1/charges", sim.base_url()))
            .header("Idempotency-Key", format!("cap-{i}"))
            .json(&charge(100, json!({})))
            .send()
            .await
            .unwrap();
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        answers.push((response.status().as_u16(), retry_after));
    }
    let admitted = answers.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(admitted, 4, "{answers:?}");
    assert!(answers.iter().filter(|(s, _)| *s == 429).all(|(_, after)| after.as_deref() == Some("1")), "{answers:?}");
    let ledger = ledger(&client, &sim.base_url()).await;
    assert_eq!(ledger.charges.len(), 4, "a throttled request charges nothing");
    assert_eq!(ledger.requests, 4, "throttled requests are not charge attempts");
    assert_eq!(ledger.capacity.peak_admitted_per_s, 4);
    assert_eq!(ledger.capacity.peak_offered_per_s, 10);
    assert_eq!(ledger.capacity.throttled_by_rate, 6);
    let summary: LedgerSnapshot =
        client.get(format!("{}/ledger?summary", sim.base_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!((summary.charge_count, summary.charges.len(), summary.capacity.peak_offered_per_s), (4, 0, 10));

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(post(&client, &sim.base_url(), "cap-0", &charge(100, json!({}))).await.unwrap().0, 200, "room again");
}
