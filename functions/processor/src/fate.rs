//! What became of one payment message: the one enum that decides deletion, and the log line and
//! metrics each fate is counted by.

use std::time::Duration;

use lambda_observability::{Metrics, Unit};
use lambda_sqs_batch::Fate;
use payments_core::payment::http_gateway::PROVIDER_UNAUTHORIZED;

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentFate {
    /// Charged now.
    Charged {
        /// The provider's charge id.
        charge_id: String,
    },
    /// Already settled by an earlier delivery: nothing done.
    Duplicate,
    /// Not tried: the provider's circuit is open, another worker holds the claim, or this
    /// instance's share of the provider's rate has no slot left in this invocation. Hidden for
    /// `after`; spends none of the payment's retry budget.
    Deferred {
        /// `circuit_open`, `circuit_half_open`, `in_progress_elsewhere` or `provider_rate`.
        reason: String,
        /// Visibility delay.
        after: Duration,
    },
    /// A retryable failure: hidden for `after`, then redelivered.
    Retry {
        /// Low-cardinality reason.
        reason: String,
        /// Visibility delay.
        after: Duration,
    },
    /// Retry budget or age exhausted: sent to the dead-letter queue with its context, deleted.
    DeadLettered {
        /// `budget_exhausted` or `max_age_exceeded`.
        reason: String,
        /// The last failure's reason.
        last_error: String,
    },
    /// Failed for good (decline, rejection): stored as FAILED, never retried.
    FailedPermanently {
        /// Stable code.
        code: String,
    },
    /// A message that is not a valid payment (or reuses a key for another payment): recorded as
    /// a failure record, never retried.
    Poison {
        /// Stable code.
        code: String,
        /// What is wrong, for the failure record.
        detail: String,
    },
}

impl Fate for PaymentFate {
    /// A retry or a deferral comes back after its delay; every other fate is final.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Retry { after, .. } | Self::Deferred { after, .. } => Some(*after),
            _ => None,
        }
    }
}

impl PaymentFate {
    /// The `outcome` field of the message's log line (operators query it).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Charged { .. } => "charged",
            Self::Duplicate => "duplicate",
            Self::Deferred { .. } => "deferred",
            Self::Retry { .. } => "retry",
            Self::DeadLettered { .. } => "dead_lettered",
            Self::FailedPermanently { .. } => "failed_permanently",
            Self::Poison { .. } => "poison",
        }
    }

    /// The `reason` field of the log line: a code, never free text.
    pub fn reason(&self) -> &str {
        match self {
            Self::Retry { reason, .. } | Self::Deferred { reason, .. } | Self::DeadLettered { reason, .. } => reason,
            Self::FailedPermanently { code } | Self::Poison { code, .. } => code,
            Self::Charged { charge_id } => charge_id,
            Self::Duplicate => "",
        }
    }

    /// Counts this fate in `m`: every message's processing time, and a payment's time since its
    /// acceptance (`age_ms`) when it was charged now.
    pub fn count(&self, m: &Metrics, elapsed_ms: f64, age_ms: Option<i64>) {
        m.observe("ProcessingLatency", Unit::Milliseconds, elapsed_ms);
        match self {
            Self::Charged { .. } => {
                m.count("Processed", 1);
                if let Some(age_ms) = age_ms {
                    m.observe("PaymentLatency", Unit::Milliseconds, age_ms.max(0) as f64);
                }
            }
            Self::Duplicate => m.count("DuplicateSuppressed", 1),
            Self::Deferred { reason, .. } => m.count_with("Deferred", 1, &[("Reason", reason)]),
            Self::Retry { reason, .. } => {
                m.count("Retried", 1);
                m.count_with("Failure", 1, &[("Reason", reason)]);
            }
            Self::DeadLettered { reason, last_error } => {
                m.count("GivenUp", 1);
                m.count_with("GivenUp", 1, &[("Reason", reason)]);
                m.count_with("Failure", 1, &[("Reason", last_error)]);
            }
            Self::FailedPermanently { code } => {
                m.count("FailedPermanently", 1);
                if code == PROVIDER_UNAUTHORIZED {
                    // Every payment fails this way until the key is fixed: the alarm's metric.
                    m.count("ProviderUnauthorized", 1);
                }
                m.count_with("Failure", 1, &[("Reason", code)]);
            }
            Self::Poison { code, .. } => {
                m.count("Poison", 1);
                m.count_with("Failure", 1, &[("Reason", code)]);
            }
        }
    }
}
