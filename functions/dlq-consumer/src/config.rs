//! The DLQ consumer's configuration, validated at cold start.

use std::time::Duration;

use lambda_idempotency::IdempotencyConfig;
use lambda_sqs_batch::{Backoff, BatchConfig};
use lambda_support::env::{ConfigError, Env};
use payments_core::payment::credentials::ProviderKeyConfig;
use payments_core::payment::http_gateway::HttpGatewayConfig;

/// Everything the DLQ consumer reads from its environment.
#[derive(Debug, Clone)]
pub struct DlqConsumerConfig {
    /// Table of idempotency records, read for the last error (`IDEMPOTENCY_TABLE`).
    pub idempotency_table: String,
    /// Table of failure records (`FAILURES_TABLE`).
    pub failures_table: String,
    /// The queue dead messages come from, when the message does not say
    /// (`SOURCE_QUEUE_URL`).
    pub source_queue: String,
    /// Retry waits when the failure store is unavailable.
    pub backoff: Backoff,
    /// Concurrency.
    pub batch: BatchConfig,
    /// Metrics namespace (`METRICS_NAMESPACE`).
    pub metrics_namespace: String,
    /// The provider, asked what it holds for a dead payment (`PROVIDER_BASE_URL`,
    /// `PROVIDER_TIMEOUT_MS`, `PROVIDER_CONNECT_TIMEOUT_MS`).
    pub provider: HttpGatewayConfig,
    /// Retention of the records it completes (`IDEMPOTENCY_RETENTION_DAYS`).
    pub retention: Duration,
    /// The provider's API key (`PROVIDER_API_KEY_SECRET`, …).
    pub provider_key: ProviderKeyConfig,
}

impl DlqConsumerConfig {
    /// Reads and validates.
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        Ok(Self {
            idempotency_table: env.required("IDEMPOTENCY_TABLE")?,
            failures_table: env.required("FAILURES_TABLE")?,
            source_queue: env.string_or("SOURCE_QUEUE_URL", "unknown"),
            backoff: Backoff::new(env.millis_or("BACKOFF_BASE_MS", 5_000)?, env.secs_or("BACKOFF_CAP_SECONDS", 300)?)
                .map_err(|e| ConfigError::Rule(e.to_string()))?,
            batch: BatchConfig {
                concurrency: env.parse_or("BATCH_CONCURRENCY", 10)?,
                start_margin: Duration::from_secs(2),
            },
            metrics_namespace: env.string_or("METRICS_NAMESPACE", "PaymentsPipeline"),
            provider: HttpGatewayConfig {
                base_url: env.url("PROVIDER_BASE_URL")?,
                connect_timeout: env.millis_or("PROVIDER_CONNECT_TIMEOUT_MS", 2_000)?,
                total_timeout: env.millis_or("PROVIDER_TIMEOUT_MS", 10_000)?,
                allow_plain_http: env.parse_or("PROVIDER_ALLOW_HTTP", false)?,
            },
            retention: env.days_or("IDEMPOTENCY_RETENTION_DAYS", 14)?,
            provider_key: ProviderKeyConfig::from_env(env)?,
        })
    }

    /// The idempotency settings: it reads records, and completes one when the provider turns
    /// out to hold its charge.
    pub fn idempotency(&self) -> IdempotencyConfig {
        IdempotencyConfig { retention: self.retention, ..IdempotencyConfig::default() }
    }
}
