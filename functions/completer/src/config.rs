//! The completer's configuration, validated at cold start.

use std::time::Duration;

use lambda_idempotency::IdempotencyConfig;
use lambda_support::env::{ConfigError, Env};

/// Everything the completer reads from its environment.
#[derive(Debug, Clone)]
pub struct CompleterConfig {
    /// Table of idempotency records (`IDEMPOTENCY_TABLE`).
    pub idempotency_table: String,
    /// Table of failure records (`FAILURES_TABLE`): a payment with one belongs to an operator.
    pub failures_table: String,
    /// The payments queue (`PAYMENTS_QUEUE_URL`).
    pub queue_url: String,
    /// Record retention (`IDEMPOTENCY_RETENTION_DAYS`) and the lease of its own claims of intake
    /// records (`INTAKE_LEASE_MS`, as the intake's).
    pub idempotency: IdempotencyConfig,
    /// How long a processor record must have been left untouched before its payment counts as
    /// having no message left (`RECOVERY_QUIET_SECONDS`, default 3600). Must exceed the longest
    /// a live message stays hidden: the processor's backoff cap (`BACKOFF_CAP_SECONDS`, 900) and
    /// the breaker's longest wait (`BREAKER_OPEN_MAX_SECONDS`, 300).
    pub quiet: Duration,
    /// Most records of each operation handled in one run (`RECOVERY_BATCH_LIMIT`, default 200);
    /// the rest wait for the next run.
    pub batch_limit: usize,
    /// Metrics namespace (`METRICS_NAMESPACE`).
    pub metrics_namespace: String,
}

impl CompleterConfig {
    /// Reads and validates.
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let quiet = env.secs_or("RECOVERY_QUIET_SECONDS", 3600)?;
        if quiet < Duration::from_secs(10) {
            return Err(ConfigError::Rule("RECOVERY_QUIET_SECONDS must be at least 10".into()));
        }
        let batch_limit: usize = env.parse_or("RECOVERY_BATCH_LIMIT", 200)?;
        if batch_limit == 0 {
            return Err(ConfigError::Rule("RECOVERY_BATCH_LIMIT must be at least 1".into()));
        }
        Ok(Self {
            idempotency_table: env.required("IDEMPOTENCY_TABLE")?,
            failures_table: env.required("FAILURES_TABLE")?,
            queue_url: env.required("PAYMENTS_QUEUE_URL")?,
            idempotency: IdempotencyConfig {
                retention: env.days_or("IDEMPOTENCY_RETENTION_DAYS", 14)?,
                max_lease: env.millis_or("INTAKE_LEASE_MS", 10_000)?,
            },
            quiet,
            batch_limit,
            metrics_namespace: env.string_or("METRICS_NAMESPACE", "PaymentsPipeline"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<CompleterConfig, ConfigError> {
        let mut all = vec![("IDEMPOTENCY_TABLE", "t"), ("FAILURES_TABLE", "f"), ("PAYMENTS_QUEUE_URL", "http://q")];
        all.extend_from_slice(vars);
        CompleterConfig::from_env(&Env::from_lookup(move |name| {
            all.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        }))
    }

    #[test]
    fn defaults_wait_an_hour_of_quiet_and_limits_are_enforced() {
        let c = config(&[]).unwrap();
        assert_eq!((c.quiet, c.batch_limit), (Duration::from_secs(3600), 200));
        assert!(matches!(config(&[("RECOVERY_QUIET_SECONDS", "5")]), Err(ConfigError::Rule(_))));
        assert!(matches!(config(&[("RECOVERY_BATCH_LIMIT", "0")]), Err(ConfigError::Rule(_))));
        assert!(config(&[]).is_ok_and(|c| c.idempotency.max_lease == Duration::from_secs(10)));
    }
}
