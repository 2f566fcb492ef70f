//! The provider's API key, kept in the stack's Secrets Manager secret (LocalStack), against a
//! simulator that checks it: sent as a bearer token; a rotated key is picked up on the
//! provider's 401 without a cold start; a key the provider refuses even after the secret was
//! read again fails the payment for good, with a clear reason and the alarm's metric.

use std::time::Duration;

use integration_tests::pipeline::{drive_until_empty, ledger, payment, processor, send, test_config};
use integration_tests::{aws, own_stack, unique_scope};
use payments_core::payment::http_gateway::{HttpGateway, PROVIDER_UNAUTHORIZED};
use processor::Handled;
use provider_simulator::{SimConfig, Simulator};

async fn put_secret(sdk: &aws_config::SdkConfig, secret: &str, value: &str) {
    let secrets = aws_sdk_secretsmanager::Client::new(sdk);
    secrets.put_secret_value().secret_id(secret).secret_string(value).send().await.expect("PutSecretValue");
}

/// The provider now takes only `key`.
async fn provider_takes(sim: &Simulator, key: &str) {
    let config = SimConfig { api_key: Some(key.to_owned()), ..SimConfig::default() };
    let answer = reqwest::Client::new().put(format!("{}/_sim/config", sim.base_url())).json(&config).send().await;
    assert!(answer.expect("simulator").status().is_success());
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_on_refusal_and_a_wrong_key_fails_the_payment_with_a_clear_reason() {
    let sdk = aws().await;
    let stack = own_stack(&sdk, &[]).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let secret = stack.provider_key_secret();
    put_secret(&sdk, secret, "key-one").await;
    let sim = Simulator::start(SimConfig { api_key: Some("key-one".into()), ..SimConfig::default() }).await.unwrap();
    let overrides = [("PROVIDER_API_KEY_SECRET", secret), ("PROVIDER_KEY_MIN_REFRESH_SECONDS", "0")];
    let config = test_config(&stack, &sim.base_url(), &overrides);
    let gateway = HttpGateway::deployed(&config.provider, &config.provider_key, &sdk).unwrap();
    let p = processor(&config, &sdk, gateway, 1);
    let scope = unique_scope("credentials");
    let run = |key: &'static str| {
        let (p, sqs, stack, scope) = (&p, &sqs, &stack, &scope);
        async move {
            send(sqs, stack.queue_url(), &[payment(scope, key, 700, serde_json::json!({})).to_body()]).await;
            let summaries =
                drive_until_empty(p, sqs, stack.queue_url(), stack.queue_arn(), Duration::from_secs(30)).await;
            summaries.into_iter().flat_map(|s| s.handled.into_iter().map(|(_, h)| h)).collect::<Vec<Handled>>()
        }
    };

    assert!(matches!(&run("cred-1").await[..], [Handled::Charged { .. }]), "the key from the secret was sent");

    // Rotation: the provider takes only the new key; the processor still holds the old one.
    put_secret(&sdk, secret, "key-two").await;
    provider_takes(&sim, "key-two").await;
    assert!(matches!(&run("cred-2").await[..], [Handled::Charged { .. }]), "picked up after one refusal");
    assert_eq!(ledger(&sim.base_url()).await.unauthorized, 1);

    // The provider refuses the key the secret holds: the payment fails for good, saying why.
    provider_takes(&sim, "key-three").await;
    let handled = run("cred-3").await;
    assert_eq!(handled, [Handled::FailedPermanently { code: PROVIDER_UNAUTHORIZED.into() }]);
    let ledger = ledger(&sim.base_url()).await;
    assert_eq!(ledger.charges.len(), 2, "nothing charged for the refused payment");
    assert_eq!(ledger.unauthorized, 2, "refused once: the secret, read again, held the same key, so not sent again");
}
