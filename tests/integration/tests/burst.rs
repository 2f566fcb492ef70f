//! A spike against the local intake: 300 clients at once (the runtime emulator alone deadlocks
//! past ~100, see `localenv::front`). Every client gets an answer — a 202, or a 503 with
//! `Retry-After` when the front door is full — and the intake answers normally afterwards.

use std::collections::BTreeMap;
use std::time::Duration;

use localenv::pipeline::{PipelineOptions, start};
use serde_json::json;

const CLIENTS: usize = 300;

async fn post(client: &reqwest::Client, url: &str, key: &str) -> Result<(u16, Option<String>), String> {
    let body = json!({"amount": 700, "currency": "EUR", "payment_method": "pm_card_visa", "merchant_reference": key});
    let response = client
        .post(url)
        .header("idempotency-key", key)
        .header("x-local-scope", "burst")
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(90))
        .send()
        .await
        .map_err(|e| format!("{key}: no answer: {e:?}"))?;
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok((response.status().as_u16(), retry_after))
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hundred_simultaneous_clients_are_all_answered_and_the_intake_keeps_answering() {
    let options = PipelineOptions { port: 9450, progress: false, ..PipelineOptions::default() };
    let running = start(&options).await.expect("pipeline starts");
    let url = running.intake_url();
    let client = reqwest::Client::new();
    let answers = futures::future::join_all((0..CLIENTS).map(|i| {
        let (client, url) = (client.clone(), url.clone());
        async move { post(&client, &url, &format!("burst-{i:04}")).await }
    }))
    .await;
    let after = post(&client, &url, "after-the-burst").await;
    running.shutdown().await;

    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for answer in &answers {
        let (status, retry_after) = answer.as_ref().expect("every client is answered");
        assert!(matches!(status, 202 | 503), "unexpected answer {status}");
        if *status == 503 {
            assert_eq!(retry_after.as_deref(), Some("1"), "a 503 says when to come back");
        }
        *by_status.entry(*status).or_default() += 1;
    }
    println!("{CLIENTS} simultaneous clients: {by_status:?}");
    assert!(by_status.get(&202).is_some_and(|n| *n >= 64), "the intake kept accepting: {by_status:?}");
    assert_eq!(after.expect("answered after the burst").0, 202, "the intake answers normally afterwards");
}
