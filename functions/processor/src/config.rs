//! The processor's configuration, validated at cold start.

use std::time::Duration;

use payments_core::config::{ConfigError, Env};
use payments_core::idempotency::IdempotencyConfig;
use payments_core::payment::http_gateway::HttpGatewayConfig;
use payments_core::sqs::{Backoff, BatchConfig};

/// Everything the processor reads from its environment.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// Table of idempotency records (`IDEMPOTENCY_TABLE`).
    pub idempotency_table: String,
    /// Table of failure records (`FAILURES_TABLE`).
    pub failures_table: String,
    /// Provider URL and timeouts (`PROVIDER_BASE_URL`, `PROVIDER_TIMEOUT_MS`, `PROVIDER_CONNECT_TIMEOUT_MS`).
    pub provider: HttpGatewayConfig,
    /// Retention and lease cap (`IDEMPOTENCY_RETENTION_DAYS`, `IDEMPOTENCY_MAX_LEASE_SECONDS`).
    pub idempotency: IdempotencyConfig,
    /// Retry waits (`BACKOFF_BASE_MS`, `BACKOFF_CAP_SECONDS`).
    pub backoff: Backoff,
    /// Concurrency (`BATCH_CONCURRENCY`) and the time a record needs (provider timeout +
    /// `LEASE_MARGIN_MS`).
    pub batch: BatchConfig,
    /// Metrics namespace (`METRICS_NAMESPACE`).
    pub metrics_namespace: String,
}

impl ProcessorConfig {
    /// Reads and validates. The rule checked here is the one the model checker found: a claim's
    /// lease must outlast the provider call it protects, or a second worker could call the
    /// provider while the first call is still running.
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let provider = HttpGatewayConfig {
            base_url: env.url("PROVIDER_BASE_URL")?,
            connect_timeout: env.millis_or("PROVIDER_CONNECT_TIMEOUT_MS", 2_000)?,
            total_timeout: env.millis_or("PROVIDER_TIMEOUT_MS", 10_000)?,
        };
        let margin = env.millis_or("LEASE_MARGIN_MS", 2_000)?;
        let idempotency = IdempotencyConfig {
            retention: Duration::from_secs(env.parse_or::<u64>("IDEMPOTENCY_RETENTION_DAYS", 7)? * 24 * 3600),
            max_lease: env.secs_or("IDEMPOTENCY_MAX_LEASE_SECONDS", 900)?,
        };
        let backoff = Backoff::new(env.millis_or("BACKOFF_BASE_MS", 2_000)?, env.secs_or("BACKOFF_CAP_SECONDS", 900)?)
            .map_err(|e| ConfigError::Rule(e.to_string()))?;
        let concurrency: usize = env.parse_or("BATCH_CONCURRENCY", 10)?;
        if !(1..=100).contains(&concurrency) {
            return Err(ConfigError::Rule(format!("BATCH_CONCURRENCY must be 1..=100, got {concurrency}")));
        }
        if provider.connect_timeout > provider.total_timeout {
            return Err(ConfigError::Rule("PROVIDER_CONNECT_TIMEOUT_MS must not exceed PROVIDER_TIMEOUT_MS".into()));
        }
        let needed = provider.total_timeout + margin;
        if idempotency.max_lease <= needed {
            return Err(ConfigError::Rule(format!(
                "IDEMPOTENCY_MAX_LEASE_SECONDS ({:?}) must exceed the provider timeout plus LEASE_MARGIN_MS ({needed:?}): \
                 otherwise a lease can lapse while its provider call is still running",
                idempotency.max_lease
            )));
        }
        Ok(Self {
            idempotency_table: env.required("IDEMPOTENCY_TABLE")?,
            failures_table: env.required("FAILURES_TABLE")?,
            provider,
            idempotency,
            backoff,
            batch: BatchConfig { concurrency, start_margin: needed },
            metrics_namespace: env.string_or("METRICS_NAMESPACE", "PaymentsPipeline"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<ProcessorConfig, ConfigError> {
        let mut map: HashMap<String, String> =
            [("IDEMPOTENCY_TABLE", "idem"), ("FAILURES_TABLE", "fail"), ("PROVIDER_BASE_URL", "http://127.0.0.1:1")]
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect();
        map.extend(pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())));
        ProcessorConfig::from_env(&Env::from_lookup(move |n| map.get(n).cloned()))
    }

    #[test]
    fn defaults_are_valid_and_a_record_needs_the_provider_timeout_plus_margin() {
        let c = config(&[]).unwrap();
        assert_eq!(c.batch.start_margin, Duration::from_millis(12_000));
        assert_eq!(c.backoff.cap(), Duration::from_secs(900));
    }

    #[test]
    fn a_lease_shorter_than_the_provider_call_is_refused_at_cold_start() {
        let err = config(&[("IDEMPOTENCY_MAX_LEASE_SECONDS", "10"), ("PROVIDER_TIMEOUT_MS", "10000")]).unwrap_err();
        assert!(matches!(err, ConfigError::Rule(ref m) if m.contains("lease")), "{err}");
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert_eq!(config(&[("FAILURES_TABLE", "")]).unwrap_err(), ConfigError::Missing("FAILURES_TABLE"));
        assert!(matches!(config(&[("BACKOFF_CAP_SECONDS", "50000")]), Err(ConfigError::Rule(_))));
        assert!(matches!(config(&[("BATCH_CONCURRENCY", "0")]), Err(ConfigError::Rule(_))));
        assert!(matches!(config(&[("PROVIDER_BASE_URL", "localhost")]), Err(ConfigError::Invalid { .. })));
    }
}
