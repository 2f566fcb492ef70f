//! The operators' tools over a deployed stack, in LocalStack or in AWS: built here, in one place,
//! so that `ops` and the tests run the same code.
//!
//! **One source of provider credentials.** Every client of the provider reads its API key from
//! the stack's secret (`ProviderApiKeySecretArn`) through [`HttpGateway::deployed`], the same
//! constructor the processor and the DLQ consumer use; an operator's tool never asks the provider
//! without it (a lookup answered 401 would otherwise read as "unknown", and a redrive past the
//! provider's key window could then charge twice).

use std::time::Duration;

use lambda_idempotency::dynamodb::DynamoDbStore;
use lambda_idempotency::{Idempotency, IdempotencyConfig};
use payments_core::failures::dynamodb::DynamoDbFailureStore;
use payments_core::failures::redrive::{DeadLetterMove, Redriver};
use payments_core::payment::OutcomeResolver;
use payments_core::payment::credentials::{KeyCachePolicy, ProviderKeyConfig};
use payments_core::payment::http_gateway::{BuildError, HttpGateway, HttpGatewayConfig};
use payments_core::payment::queue::SqsPaymentQueue;

use crate::stack::Stack;

/// The redrive tool over a stack's tables, queue and provider.
pub type StackRedriver = Redriver<DynamoDbFailureStore, DynamoDbStore, HttpGateway, SqsPaymentQueue>;

/// The provider as the stack's functions reach it: its URL (the stack's `ProviderBaseUrl`, or
/// `url_override`) and the API key from the stack's secret. Plain `http://` only on loopback
/// (a local simulator).
pub fn provider(
    sdk: &aws_config::SdkConfig,
    stack: &Stack,
    url_override: Option<&str>,
) -> Result<HttpGateway, BuildError> {
    let base_url = url_override.unwrap_or_else(|| stack.provider_base_url()).to_owned();
    let config = HttpGatewayConfig {
        allow_plain_http: is_loopback(&base_url),
        base_url,
        connect_timeout: Duration::from_secs(2),
        total_timeout: Duration::from_secs(10),
    };
    let key = ProviderKeyConfig {
        secret_id: Some(stack.provider_key_secret().to_owned()),
        policy: KeyCachePolicy::default(),
    };
    HttpGateway::deployed(&config, &key, sdk)
}

/// The redrive tool: failure records, the payments' records, the payments queue, and `provider`
/// asked before anything is sent again (`key_window`: how long it remembers an idempotency key).
pub fn redriver(
    sdk: &aws_config::SdkConfig,
    stack: &Stack,
    provider: HttpGateway,
    key_window: Duration,
) -> StackRedriver {
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let records = DynamoDbStore::new(dynamodb.clone(), stack.idempotency_table());
    Redriver::new(
        DynamoDbFailureStore::new(dynamodb, stack.failures_table()),
        OutcomeResolver::new(Idempotency::new(records, IdempotencyConfig::default()), provider),
        SqsPaymentQueue::new(aws_sdk_sqs::Client::new(sdk), stack.queue_url()),
        key_window,
    )
}

/// Moving the stack's dead-letter queue back to its payments queue.
pub fn dead_letter_move(sdk: &aws_config::SdkConfig, stack: &Stack) -> DeadLetterMove {
    DeadLetterMove::new(aws_sdk_sqs::Client::new(sdk), stack.queue_arn(), stack.dlq_arn())
}

/// Whether `url` names this machine (`http://127.0.0.1…`, `http://localhost…`).
pub fn is_loopback(url: &str) -> bool {
    let host = url.split("://").nth(1).unwrap_or("").split(['/', ':']).next().unwrap_or("");
    host == "localhost"
        || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || url.starts_with("http://[::1]")
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn only_this_machine_is_loopback() {
        assert!(is_loopback("http://127.0.0.1:9100"));
        assert!(is_loopback("http://localhost/v1"));
        assert!(!is_loopback("https://api.provider.example"));
        assert!(!is_loopback("http://127.example.com"));
    }
}
