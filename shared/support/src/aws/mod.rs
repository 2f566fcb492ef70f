//! What every AWS adapter shares: the one SDK configuration every client is built from, and the
//! classification of SDK errors.

#[cfg(feature = "dynamodb")]
pub mod dynamodb;
pub mod errors;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

/// The SDK behaviour this code was tested with, pinned: `BehaviorVersion::latest()` would let an
/// SDK upgrade change defaults (retries, timeouts, checksums) without a code change.
pub fn behavior_version() -> BehaviorVersion {
    BehaviorVersion::v2026_01_12()
}

/// How long SDK calls may take. DynamoDB and SQS answer in milliseconds in-region, so an attempt
/// that takes a second is a stuck connection, better retried than waited for. Three attempts
/// (the standard retry mode: exponential backoff with jitter, retrying throttling, 5xx and
/// timeouts) within three seconds keep a store call well inside every budget it spends from: the
/// intake's lease (10 s), the processor's invocation (30 s) and API Gateway's 30 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdkTimeouts {
    /// Opening a connection.
    pub connect: Duration,
    /// One attempt.
    pub attempt: Duration,
    /// The whole call, retries included.
    pub operation: Duration,
    /// Attempts per call (1 = no retry).
    pub max_attempts: u32,
}

impl Default for SdkTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(1),
            attempt: Duration::from_secs(1),
            operation: Duration::from_secs(3),
            max_attempts: 3,
        }
    }
}

impl SdkTimeouts {
    /// The defaults, overridden by `AWS_SDK_ATTEMPT_TIMEOUT_MS` and `AWS_SDK_OPERATION_TIMEOUT_MS`
    /// (LocalStack under a heavy local run can be slower than DynamoDB ever is).
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &crate::env::Env<F>) -> Result<Self, crate::env::ConfigError> {
        let defaults = Self::default();
        let timeouts = Self {
            attempt: env.millis_or("AWS_SDK_ATTEMPT_TIMEOUT_MS", defaults.attempt.as_millis() as u64)?,
            operation: env.millis_or("AWS_SDK_OPERATION_TIMEOUT_MS", defaults.operation.as_millis() as u64)?,
            ..defaults
        };
        if timeouts.attempt > timeouts.operation {
            return Err(crate::env::ConfigError::Rule(
                "AWS_SDK_ATTEMPT_TIMEOUT_MS must not exceed AWS_SDK_OPERATION_TIMEOUT_MS".into(),
            ));
        }
        Ok(timeouts)
    }
}

/// Loads the AWS configuration the standard way (environment, profile, role) with the pinned
/// behaviour, the standard retry mode and the timeouts from the environment. `AWS_ENDPOINT_URL`
/// points every client at LocalStack in local runs; production code has no endpoint special case.
pub async fn load_config() -> SdkConfig {
    // A malformed override is reported, then the defaults apply: the functions' own
    // configuration is what stops a cold start.
    let timeouts = SdkTimeouts::from_env(&crate::env::Env::process()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "invalid SDK timeout override; using the defaults");
        SdkTimeouts::default()
    });
    load_config_with(timeouts).await
}

/// The same with explicit timeouts (tools that wait longer than a function may).
pub async fn load_config_with(timeouts: SdkTimeouts) -> SdkConfig {
    loader(timeouts).load().await
}

/// The standard loader with the pinned behaviour, the standard retry mode and `timeouts`, for a
/// caller that sets more (an operator's tool choosing LocalStack or a profile).
pub fn loader(timeouts: SdkTimeouts) -> aws_config::ConfigLoader {
    aws_config::defaults(behavior_version())
        .retry_config(RetryConfig::standard().with_max_attempts(timeouts.max_attempts))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(timeouts.connect)
                .operation_attempt_timeout(timeouts.attempt)
                .operation_timeout(timeouts.operation)
                .build(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::Env;

    #[tokio::test]
    async fn every_client_gets_the_pinned_behaviour_the_standard_retries_and_bounded_calls() {
        let sdk = load_config_with(SdkTimeouts::default()).await;
        assert_eq!(sdk.behavior_version(), Some(behavior_version()));
        let timeouts = sdk.timeout_config().expect("set");
        assert_eq!(timeouts.operation_timeout(), Some(Duration::from_secs(3)));
        assert_eq!(timeouts.operation_attempt_timeout(), Some(Duration::from_secs(1)));
        assert_eq!(timeouts.connect_timeout(), Some(Duration::from_secs(1)));
        let retry = sdk.retry_config().expect("set");
        assert_eq!((retry.mode(), retry.max_attempts()), (aws_config::retry::RetryMode::Standard, 3));
    }

    #[test]
    fn overrides_are_read_and_checked() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            Env::from_lookup(move |n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| (*v).to_owned()))
        };
        let t = SdkTimeouts::from_env(&env(&[
            ("AWS_SDK_ATTEMPT_TIMEOUT_MS", "2500"),
            ("AWS_SDK_OPERATION_TIMEOUT_MS", "8000"),
        ]))
        .unwrap();
        assert_eq!((t.attempt, t.operation), (Duration::from_millis(2500), Duration::from_secs(8)));
        assert!(SdkTimeouts::from_env(&env(&[("AWS_SDK_ATTEMPT_TIMEOUT_MS", "9000")])).is_err());
    }
}
