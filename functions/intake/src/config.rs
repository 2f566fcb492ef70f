//! The intake's configuration, validated at cold start.

use std::time::Duration;

use lambda_idempotency::IdempotencyConfig;
use lambda_support::env::{ConfigError, Env};
use payments_core::payment::MinorUnits;

/// Everything the intake reads from its environment.
#[derive(Debug, Clone)]
pub struct IntakeConfig {
    /// Table of idempotency records (`IDEMPOTENCY_TABLE`).
    pub idempotency_table: String,
    /// Table of failure records (`FAILURES_TABLE`), read for DEAD_LETTERED.
    pub failures_table: String,
    /// The payments queue (`PAYMENTS_QUEUE_URL`).
    pub queue_url: String,
    /// Largest accepted amount in minor units (`MAX_AMOUNT_MINOR`).
    pub max_amount_minor: u64,
    /// Whether the `X-Local-Scope` header may name the caller (`ALLOW_SCOPE_HEADER`): for local
    /// runs only, where no authorizer exists. Off in production.
    pub allow_scope_header: bool,
    /// JWT claim naming the caller when a JWT authorizer is used (`SCOPE_CLAIM`, default `sub`).
    pub scope_claim: String,
    /// Record retention (`IDEMPOTENCY_RETENTION_DAYS`) and the lease: how long an acceptance may
    /// take before a retry may take it over (`INTAKE_LEASE_MS`).
    pub idempotency: IdempotencyConfig,
    /// How long after an acceptance's lease ends, unfinished, the completer enqueues it on the
    /// intake's behalf (`RECOVERY_GRACE_SECONDS`, default 120): time for the client's own retry,
    /// which would finish it first.
    pub recovery_grace: Duration,
    /// Metrics namespace (`METRICS_NAMESPACE`).
    pub metrics_namespace: String,
    /// What every problem `type` starts with (`PROBLEM_TYPE_BASE`, default
    /// [`crate::problem::DEFAULT_TYPE_BASE`], the API's own documentation route). Ends in `/` or
    /// `#`, so that the slug completes it.
    pub problem_type_base: String,
}

impl IntakeConfig {
    /// Reads and validates.
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let max_amount_minor: u64 = env.parse_or("MAX_AMOUNT_MINOR", 100_000_000)?;
        if max_amount_minor == 0 || max_amount_minor > MinorUnits::MAX {
            return Err(ConfigError::Rule(format!("MAX_AMOUNT_MINOR must be 1..={}", MinorUnits::MAX)));
        }
        let lease = env.millis_or("INTAKE_LEASE_MS", 10_000)?;
        if lease < Duration::from_secs(1) {
            return Err(ConfigError::Rule(
                "INTAKE_LEASE_MS must be at least 1000: it must outlast one SendMessage".into(),
            ));
        }
        let problem_type_base = env.string_or("PROBLEM_TYPE_BASE", crate::problem::DEFAULT_TYPE_BASE);
        if !problem_type_base.ends_with(['/', '#']) {
            return Err(ConfigError::Rule("PROBLEM_TYPE_BASE must end with '/' or '#' (the slug follows it)".into()));
        }
        Ok(Self {
            idempotency_table: env.required("IDEMPOTENCY_TABLE")?,
            failures_table: env.required("FAILURES_TABLE")?,
            queue_url: env.required("PAYMENTS_QUEUE_URL")?,
            max_amount_minor,
            allow_scope_header: env.flag_or("ALLOW_SCOPE_HEADER", false)?,
            scope_claim: env.string_or("SCOPE_CLAIM", "sub"),
            idempotency: IdempotencyConfig {
                retention: env.days_or("IDEMPOTENCY_RETENTION_DAYS", 14)?,
                max_lease: lease,
            },
            recovery_grace: env.secs_or("RECOVERY_GRACE_SECONDS", 120)?,
            metrics_namespace: env.string_or("METRICS_NAMESPACE", "PaymentsPipeline"),
            problem_type_base,
        })
    }
}
