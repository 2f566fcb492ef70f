//! The provider's API key, kept in the stack's Secrets Manager secret (LocalStack), against a
//! simulator that checks it: sent as a bearer token; a rotated key is picked up on the
//! provider's 401 without a cold start; a key the provider refuses even after the secret was
//! read again fails the payment for good, with a clear reason and the alarm's metric.

use std::time::Duration;

use integration_tests::pipeline::{
    dlq_consumer, drive_until_empty, ledger, payment, processor, redriver, send, test_config,
};
use integration_tests::{aws, own_stack, unique_scope};
use payments_core::payment::http_gateway::{HttpGateway, PROVIDER_UNAUTHORIZED};
use processor::PaymentFate;
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
            summaries.into_iter().flat_map(|s| s.handled.into_iter().map(|(_, h)| h)).collect::<Vec<PaymentFate>>()
        }
    };

    assert!(matches!(&run("cred-1").await[..], [PaymentFate::Charged { .. }]), "the key from the secret was sent");

    // Rotation: the provider takes only the new key; the processor still holds the old one.
    put_secret(&sdk, secret, "key-two").await;
    provider_takes(&sim, "key-two").await;
    assert!(matches!(&run("cred-2").await[..], [PaymentFate::Charged { .. }]), "picked up after one refusal");
    assert_eq!(ledger(&sim.base_url()).await.unauthorized, 1);

    // The provider refuses the key the secret holds: the payment fails for good, saying why.
    provider_takes(&sim, "key-three").await;
    let handled = run("cred-3").await;
    assert_eq!(handled, [PaymentFate::FailedPermanently { code: PROVIDER_UNAUTHORIZED.into() }]);
    let ledger = ledger(&sim.base_url()).await;
    assert_eq!(ledger.charges.len(), 2, "nothing charged for the refused payment");
    assert_eq!(ledger.unauthorized, 2, "refused once: the secret, read again, held the same key, so not sent again");
}

/// The secret's current value.
async fn secret_value(sdk: &aws_config::SdkConfig, secret: &str) -> String {
    let secrets = aws_sdk_secretsmanager::Client::new(sdk);
    let out = secrets.get_secret_value().secret_id(secret).send().await.expect("GetSecretValue");
    out.secret_string().expect("a string secret").to_owned()
}

/// Every client of the provider, built the way it is deployed or run, sends the key from the
/// stack's secret: the processor (a charge, and a lookup before it gives a payment up), the DLQ
/// consumer (a lookup before it records a dead payment) and the operators' redrive (a lookup
/// before it sends anything again). The completer never calls the provider. Against a provider
/// that refuses any other key, nothing is refused — and a client built without the key is, so
/// the check can fail.
#[tokio::test]
async fn every_client_of_the_provider_sends_the_key_from_the_stacks_secret() {
    let sdk = aws().await;
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let stack = own_stack(&sdk, &[("ProviderBaseUrl", &sim.base_url())]).await;
    provider_takes(&sim, &secret_value(&sdk, stack.provider_key_secret()).await).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let scope = unique_scope("every-path");

    // The processor as deployed: one payment charged, one given up after a lookup.
    let overrides = [("PROVIDER_API_KEY_SECRET", stack.provider_key_secret()), ("MAX_PROVIDER_ATTEMPTS", "1")];
    let config = test_config(&stack, &sim.base_url(), &overrides);
    let deployed = processor::build(&config, &sdk).expect("the deployed processor");
    let given_up = payment(&scope, "given-up", 300, serde_json::json!({"simulate": "503"}));
    let bodies = [payment(&scope, "charged", 200, serde_json::json!({})).to_body(), given_up.to_body()];
    send(&sqs, stack.queue_url(), &bodies).await;
    drive_until_empty(&deployed, &sqs, stack.queue_url(), stack.queue_arn(), Duration::from_secs(30)).await;

    // The DLQ consumer as deployed, on the dead letter; then the operators' redrive of it.
    let dead = localenv::event_source::receive(&sqs, stack.dlq_url(), 10, 2).await.unwrap();
    assert_eq!(dead.len(), 1, "the given-up payment reached the DLQ");
    let consumer = dlq_consumer(&stack, &sdk, &sim.base_url());
    let record = localenv::event_source::lambda_record(&dead[0], stack.dlq_arn());
    let outcome = consumer.record(&record, &consumer.metrics().invocation()).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    let lookups_before_redrive = ledger(&sim.base_url()).await.lookups;
    let failure =
        payments_core::failures::FailureStore::for_payment(consumer.failures(), &scope, &given_up.idempotency_key)
            .await
            .unwrap()
            .pop()
            .expect("a failure record");
    let ops = redriver(&stack, &sdk, &sim.base_url());
    let now = lambda_support::clock::Clock::now_ms(&lambda_support::clock::SystemClock);
    ops.redrive_record(&failure.partition, &failure.message_id, false, now).await.expect("redriven");

    let seen = ledger(&sim.base_url()).await;
    assert_eq!(seen.charges.len(), 1, "the first payment was charged");
    assert!(seen.lookups > lookups_before_redrive, "the redrive asked the provider");
    assert!(seen.lookups >= 3, "the processor, the DLQ consumer and the redrive asked: {seen:?}");
    assert_eq!(seen.unauthorized, 0, "no request went without the key");

    // The control: a client without the key is refused, and a redrive with it stops.
    let keyless = HttpGateway::new(&config.provider).unwrap();
    let lookup = payments_core::payment::ChargeLookup {
        idempotency_key: "k".into(),
        merchant_reference: given_up.payment.merchant_reference.clone(),
        amount: given_up.payment.amount,
        currency: given_up.payment.currency,
    };
    let refused = payments_core::payment::PaymentGateway::lookup(&keyless, &lookup).await;
    assert!(matches!(refused, payments_core::payment::Lookup::KeyRefused(_)), "{refused:?}");
    assert_eq!(ledger(&sim.base_url()).await.unauthorized, 1);

    // The provider refuses the secret's key: a redrive stops there, sending nothing.
    provider_takes(&sim, "a-key-the-secret-does-not-hold").await;
    let depth = integration_tests::pipeline::queue_depth(&sqs, stack.queue_url()).await;
    let stopped = ops.redrive_record(&failure.partition, &failure.message_id, false, now).await;
    assert!(
        matches!(stopped, Err(payments_core::failures::redrive::RedriveError::ProviderRefusedKey { .. })),
        "{stopped:?}"
    );
    assert_eq!(integration_tests::pipeline::queue_depth(&sqs, stack.queue_url()).await, depth, "nothing sent");
}
