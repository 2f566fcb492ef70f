//! The processor's configuration, validated at cold start.

use std::time::Duration;

use fleet_breaker::{BreakerConfig, BreakerPolicy};
use lambda_idempotency::IdempotencyConfig;
use lambda_idempotency::batching::BatchingConfig;
use lambda_sqs_batch::{Backoff, BatchConfig};
use lambda_support::env::{ConfigError, Env};
use payments_core::budget::RetryBudget;
use payments_core::pacing::InstanceRate;
use payments_core::payment::credentials::ProviderKeyConfig;
use payments_core::payment::http_gateway::HttpGatewayConfig;

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
    /// A batch's claims in one request and its settlements in one (`IDEMPOTENCY_BATCH_WRITES`,
    /// default on; off: a request per claim and per settlement). A settlement waits for the
    /// others at most as long as a message may take, and never into the lease's last
    /// `LEASE_MARGIN_MS`.
    pub batching: BatchingConfig,
    /// Retry waits (`BACKOFF_BASE_MS`, `BACKOFF_CAP_SECONDS`).
    pub backoff: Backoff,
    /// When a payment is given up (`MAX_PROVIDER_ATTEMPTS`, `MAX_PAYMENT_AGE_SECONDS`).
    pub budget: RetryBudget,
    /// Where given-up payments go (`DEAD_LETTER_QUEUE_URL`).
    pub dead_letter_queue_url: String,
    /// The provider's circuit breaker (`PROVIDER_NAME`, `BREAKER_*`).
    pub breaker: BreakerConfig,
    /// Concurrency (`BATCH_CONCURRENCY`) and the time a record needs (provider timeout +
    /// `LEASE_MARGIN_MS`).
    pub batch: BatchConfig,
    /// Metrics namespace (`METRICS_NAMESPACE`).
    pub metrics_namespace: String,
    /// This instance's share of the provider's rate limit (`PROVIDER_RATE_LIMIT` requests per
    /// second for the fleet, divided by `PROVIDER_RATE_SHARES`, the instances that may run at
    /// once); `None` when no limit is set.
    pub provider_rate: Option<InstanceRate>,
    /// The provider's API key (`PROVIDER_API_KEY_SECRET`, `PROVIDER_KEY_MAX_AGE_SECONDS`,
    /// `PROVIDER_KEY_MIN_REFRESH_SECONDS`).
    pub provider_key: ProviderKeyConfig,
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
            allow_plain_http: env.parse_or("PROVIDER_ALLOW_HTTP", false)?,
        };
        let margin = env.millis_or("LEASE_MARGIN_MS", 2_000)?;
        let idempotency = IdempotencyConfig {
            retention: env.days_or("IDEMPOTENCY_RETENTION_DAYS", 14)?,
            max_lease: env.secs_or("IDEMPOTENCY_MAX_LEASE_SECONDS", 900)?,
        };
        let backoff = Backoff::new(env.millis_or("BACKOFF_BASE_MS", 2_000)?, env.secs_or("BACKOFF_CAP_SECONDS", 900)?)
            .map_err(|e| ConfigError::Rule(e.to_string()))?;
        let budget = RetryBudget::new(
            env.parse_or("MAX_PROVIDER_ATTEMPTS", 5)?,
            env.secs_or("MAX_PAYMENT_AGE_SECONDS", 6 * 3600)?,
        )
        .map_err(|e| ConfigError::Rule(e.to_string()))?;
        let concurrency: usize = env.parse_or("BATCH_CONCURRENCY", 10)?;
        if !(1..=100).contains(&concurrency) {
            return Err(ConfigError::Rule(format!("BATCH_CONCURRENCY must be 1..=100, got {concurrency}")));
        }
        if provider.connect_timeout > provider.total_timeout {
            return Err(ConfigError::Rule("PROVIDER_CONNECT_TIMEOUT_MS must not exceed PROVIDER_TIMEOUT_MS".into()));
        }
        let needed = provider.total_timeout + margin;
        let breaker = breaker_config(env, needed)?;
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
            batching: BatchingConfig {
                enabled: env.parse_or("IDEMPOTENCY_BATCH_WRITES", true)?,
                max_hold: needed,
                deadline_margin: margin,
            },
            backoff,
            budget,
            dead_letter_queue_url: env.required("DEAD_LETTER_QUEUE_URL")?,
            breaker,
            batch: BatchConfig { concurrency, start_margin: needed },
            metrics_namespace: env.string_or("METRICS_NAMESPACE", "PaymentsPipeline"),
            provider_rate: provider_rate(env)?,
            provider_key: ProviderKeyConfig::from_env(env)?,
        })
    }
}

/// `PROVIDER_RATE_LIMIT` (0 or unset: unpaced) shared among `PROVIDER_RATE_SHARES` instances
/// (the template passes the event source mapping's `MaximumConcurrency`).
fn provider_rate<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Option<InstanceRate>, ConfigError> {
    let limit: f64 = env.parse_or("PROVIDER_RATE_LIMIT", 0.0)?;
    if limit == 0.0 {
        return Ok(None);
    }
    let shares: u32 = env.parse_or("PROVIDER_RATE_SHARES", 1)?;
    InstanceRate::share_of(limit, shares).map(Some).map_err(|e| ConfigError::Rule(e.to_string()))
}

/// The breaker's settings. Defaults, against the usual references: Resilience4j opens at a 50 %
/// failure rate over 100 calls and waits 60 s; Polly at 10 % over 30 s with at least 100 calls,
/// waiting 5 s. Both count every call, which here would cost a DynamoDB write per payment; and a
/// payment pipeline at low volume would take minutes to reach 100 calls while every payment
/// burns its retries. So: 5 failures within 30 s with no success between (Polly's classic
/// consecutive-failure breaker, shared by the fleet), a first wait of 30 s (between the two)
/// doubling per failed probe up to 5 min, and 3 successful probes to close (Resilience4j lets
/// 10 through half-open at once; here probes go one at a time, so fewer suffice).
fn breaker_config<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    probe_lease: Duration,
) -> Result<BreakerConfig, ConfigError> {
    let policy = BreakerPolicy {
        failure_threshold: env.parse_or("BREAKER_FAILURE_THRESHOLD", 5)?,
        failure_window: env.secs_or("BREAKER_FAILURE_WINDOW_SECONDS", 30)?,
        open_base: env.secs_or("BREAKER_OPEN_SECONDS", 30)?,
        open_max: env.secs_or("BREAKER_OPEN_MAX_SECONDS", 300)?,
        close_after: env.parse_or("BREAKER_CLOSE_AFTER_SUCCESSES", 3)?,
        reopen_after: env.parse_or("BREAKER_REOPEN_AFTER_FAILURES", 2)?,
        probe_lease,
    };
    policy.validate().map_err(|e| ConfigError::Rule(e.to_string()))?;
    Ok(BreakerConfig {
        name: env.string_or("PROVIDER_NAME", "payment-provider"),
        policy,
        cache_for: env.secs_or("BREAKER_CACHE_SECONDS", 5)?,
        half_open_wait: env.millis_or("BREAKER_HALF_OPEN_WAIT_MS", 2_000)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<ProcessorConfig, ConfigError> {
        let mut map: HashMap<String, String> = [
            ("IDEMPOTENCY_TABLE", "idem"),
            ("FAILURES_TABLE", "fail"),
            ("PROVIDER_BASE_URL", "http://127.0.0.1:1"),
            ("DEAD_LETTER_QUEUE_URL", "http://127.0.0.1:1/000000000000/dlq"),
        ]
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
        assert_eq!((c.budget.max_attempts(), c.budget.max_age()), (5, Duration::from_secs(21_600)));
        assert_eq!(c.breaker.policy.probe_lease, c.batch.start_margin, "a probe may take as long as a record");
        assert_eq!(c.breaker.policy.open_base, Duration::from_secs(30));
        assert_eq!(c.provider_rate, None, "unpaced unless a limit is set");
    }

    #[test]
    fn the_provider_rate_limit_is_shared_among_the_instances_that_may_run_at_once() {
        let c = config(&[("PROVIDER_RATE_LIMIT", "20"), ("PROVIDER_RATE_SHARES", "5")]).unwrap();
        assert_eq!(c.provider_rate.map(|r| r.interval()), Some(Duration::from_millis(250)));
        assert!(matches!(config(&[("PROVIDER_RATE_LIMIT", "-1")]), Err(ConfigError::Rule(_))));
        assert!(matches!(
            config(&[("PROVIDER_RATE_LIMIT", "5"), ("PROVIDER_RATE_SHARES", "0")]),
            Err(ConfigError::Rule(_))
        ));
        assert!(matches!(config(&[("PROVIDER_RATE_LIMIT", "fast")]), Err(ConfigError::Invalid { .. })));
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
        assert!(matches!(config(&[("MAX_PROVIDER_ATTEMPTS", "0")]), Err(ConfigError::Rule(_))));
        assert!(matches!(config(&[("BREAKER_OPEN_MAX_SECONDS", "1")]), Err(ConfigError::Rule(_))));
        assert_eq!(
            config(&[("DEAD_LETTER_QUEUE_URL", "")]).unwrap_err(),
            ConfigError::Missing("DEAD_LETTER_QUEUE_URL")
        );
        assert!(matches!(config(&[("PROVIDER_BASE_URL", "localhost")]), Err(ConfigError::Invalid { .. })));
    }
}
