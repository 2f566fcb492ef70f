//! For every dead message: a failure record (conditional on the message id, so a redelivered
//! dead message writes one), a structured log event and EMF metrics. A dead copy of a payment
//! that is already settled is recorded closed, so the payment keeps its final status.
//!
//! Nothing is reported dead while it may have been charged: for a payment not settled, the
//! provider is asked first (unless the processor asked just before it gave the payment up).
//! Charged: the payment's record is completed with that charge (it shows SUCCEEDED) and the
//! failure record is closed. Not charged: an open failure record saying so. Unknown: nothing
//! is recorded and the dead message is retried later.

use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_idempotency::{IdempotencyRecord, IdempotencyStore, RecordStatus, StoreError};
use lambda_observability::{Metrics, MetricsSink, Unit};
use lambda_runtime::LambdaEvent;
use lambda_sqs_batch::{
    Backoff, BatchReport, Fate, Invocation, Jitter, MessageHandler, SqsFunction, VisibilityControl, dead_letter,
    receive_count,
};
use lambda_support::clock::rfc3339_ms;
use payments_core::failures::{
    FailedMessage, FailureKind, FailureRecord, FailureState, FailureStore, FailureStoreError, Recorded,
    close_open_records, stored_error,
};
use payments_core::payment::{KeyHint, OutcomeResolver, PaymentGateway, PaymentMessage, Resolution, process_key};

/// Everything the DLQ consumer builds once per cold start.
pub struct DlqConsumer<S, F, V, G> {
    /// Asks the provider what it holds for a payment before it is reported dead, and completes
    /// the payment with a charge it finds; its idempotency guard is also where the last error and
    /// attempt times are read.
    resolver: OutcomeResolver<S, G>,
    failures: F,
    sqs: SqsFunction<V>,
    /// Waits when the failure store is unavailable, with `jitter`.
    backoff: Backoff,
    jitter: Jitter,
    /// The source queue when a message does not name it.
    source_queue: String,
}

/// The parts a [`DlqConsumer`] is assembled from.
pub struct DlqConsumerParts<S, F, V, G> {
    /// The provider lookup and the idempotency guard it completes records through.
    pub resolver: OutcomeResolver<S, G>,
    /// Where failure records go.
    pub failures: F,
    /// Visibility changes of the batch's records.
    pub visibility: V,
}

impl<S, F, V: VisibilityControl, G> DlqConsumer<S, F, V, G> {
    /// Assembles the consumer from its adapters and validated configuration, on the real clock.
    pub fn new(parts: DlqConsumerParts<S, F, V, G>, config: &crate::DlqConsumerConfig) -> Self {
        Self {
            resolver: parts.resolver,
            failures: parts.failures,
            sqs: SqsFunction::new(
                config.batch,
                parts.visibility,
                MetricsSink::new(&config.metrics_namespace, "dlq-consumer"),
            ),
            backoff: config.backoff,
            jitter: Jitter::from_os(),
            source_queue: config.source_queue.clone(),
        }
    }

    /// Where failure records go (tests and tools read them).
    pub fn failures(&self) -> &F {
        &self.failures
    }

    /// The consumer's metrics sink (tests record through it).
    pub fn metrics(&self) -> &MetricsSink {
        self.sqs.metrics()
    }
}

/// What the consumer did with one dead message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterFate {
    /// A new open failure record: the payment now shows DEAD_LETTERED.
    Recorded {
        /// The failure class.
        class: String,
    },
    /// The payment was settled already (a stray copy): recorded closed.
    AlreadySettled,
    /// The provider held the payment's charge: the payment is completed with it (SUCCEEDED) and
    /// the failure record is closed.
    ResolvedCharged {
        /// The provider's charge.
        charge_id: String,
    },
    /// This message was recorded before (redelivery): nothing written.
    Duplicate,
    /// Nothing could be recorded yet (a store unavailable, or the provider's answer unknown):
    /// the dead message comes back after `after`.
    NotRecorded {
        /// What stood in the way.
        error: String,
        /// Visibility delay.
        after: Duration,
    },
}

impl Fate for DeadLetterFate {
    /// Only a dead message that could not be recorded comes back.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::NotRecorded { after, .. } => Some(*after),
            _ => None,
        }
    }
}

/// Why a dead message could not be recorded yet: it comes back for another try.
#[derive(Debug, thiserror::Error)]
pub enum NotRecordedYet {
    /// The payment's idempotency record could not be read.
    #[error("payment record unavailable: {0}")]
    Records(#[from] StoreError),
    /// The failure record could not be written, or earlier ones closed.
    #[error("failure record not written: {0}")]
    Failures(#[from] FailureStoreError),
    /// The provider gave no answer to trust: nothing is reported dead while it may be charged.
    #[error("outcome unknown, not recorded yet: {0}")]
    OutcomeUnknown(String),
    /// The provider refused the API key on the lookup.
    #[error("not recorded yet: {0}")]
    KeyRefused(String),
}

/// What is known of a dead message before its failure record is written.
struct Findings<'a> {
    message: &'a SqsMessage,
    body: &'a str,
    /// The id that keys the record: the message the processor gave up on, when it says.
    message_id: &'a str,
    hint: Option<KeyHint>,
    /// The payment's idempotency record.
    process: Option<IdempotencyRecord>,
    /// What the provider holds, for a payment not settled.
    resolution: Option<Resolution>,
}

impl Findings<'_> {
    /// The payment's record when it is settled already (this dead message is a stray copy).
    fn settled(&self) -> Option<&IdempotencyRecord> {
        self.process.as_ref().filter(|r| matches!(r.status, RecordStatus::Completed | RecordStatus::Failed))
    }
}

impl<S: IdempotencyStore, F: FailureStore, V: VisibilityControl, G: PaymentGateway> DlqConsumer<S, F, V, G> {
    /// The Lambda handler.
    pub async fn handle(&self, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        self.sqs.handle(event, self).await
    }

    /// Records every message of the batch; flushes metrics.
    pub async fn process_batch(
        &self,
        records: &[SqsMessage],
        deadline_ms: i64,
        request_id: &str,
    ) -> BatchReport<DeadLetterFate> {
        self.sqs.process_batch(records, deadline_ms, request_id, self).await
    }

    /// Records one dead message: a failure record, metrics and a log event.
    pub async fn record(&self, message: &SqsMessage, metrics: &Metrics) -> Result<DeadLetterFate, NotRecordedYet> {
        let findings = self.investigate(message, metrics).await?;
        let now = self.sqs.clock().now_ms();
        let record = self.failure_record(&findings, now);
        let written = self.failures.record(&record).await?;
        if let (Some(Resolution::Charged(charge_id)), Some(h)) = (&findings.resolution, &findings.hint) {
            // Earlier dead copies may have been recorded "not charged" before this one charged.
            let note = format!("the payment succeeded later (charge {charge_id})");
            close_open_records(&self.failures, &h.scope, &h.idempotency_key, &note, now).await?;
        }
        let outcome = match (written, findings.settled().is_some(), findings.resolution) {
            (Recorded::AlreadyRecorded, _, _) => DeadLetterFate::Duplicate,
            (Recorded::New, true, _) => DeadLetterFate::AlreadySettled,
            (Recorded::New, false, Some(Resolution::Charged(charge_id))) => {
                DeadLetterFate::ResolvedCharged { charge_id }
            }
            (Recorded::New, false, _) => DeadLetterFate::Recorded { class: record.failure_class.clone() },
        };
        let sent_ms = attribute(message, "SentTimestamp").and_then(|t| t.parse::<i64>().ok());
        count_outcome(metrics, &outcome, sent_ms.map(|sent| (now - sent).max(0) as f64 / 1000.0));
        log_recorded(&record, &outcome);
        Ok(outcome)
    }

    /// Reads what the dead message names: its payment's idempotency record and, for a payment
    /// not settled, what the provider holds.
    async fn investigate<'m>(
        &self,
        message: &'m SqsMessage,
        metrics: &Metrics,
    ) -> Result<Findings<'m>, NotRecordedYet> {
        let body = message.body.as_deref().unwrap_or_default();
        let hint = KeyHint::find(body);
        let process = match &hint {
            Some(h) => {
                let key = process_key(&h.scope, &h.idempotency_key);
                self.resolver.idempotency().get(&key).await?
            }
            None => None,
        };
        let mut findings = Findings {
            message,
            body,
            // A message the processor dead-lettered itself names the message it gave up on: that
            // id keys the record, so a dead-lettering repeated after a crash writes one record.
            message_id: message_attribute(message, dead_letter::SOURCE_MESSAGE_ID)
                .or(message.message_id.as_deref())
                .unwrap_or_default(),
            hint,
            process,
            resolution: None,
        };
        if findings.settled().is_none()
            && let Ok(payment) = PaymentMessage::parse(body)
        {
            findings.resolution = Some(self.resolve(&payment, message, metrics).await?);
        }
        Ok(findings)
    }

    /// The failure record of a dead message: open, or closed when its payment is settled or
    /// was found charged.
    fn failure_record(&self, findings: &Findings<'_>, now: i64) -> FailureRecord {
        let (message, process) = (findings.message, findings.process.as_ref());
        let given_up = message_attribute(message, dead_letter::DEAD_LETTER_REASON);
        let failed = FailedMessage {
            message_id: findings.message_id,
            hint: findings.hint.as_ref(),
            body: findings.body,
            receive_count: receive_count(message).unwrap_or(0),
            source_queue: attribute(message, "DeadLetterQueueSourceArn")
                .or_else(|| message_attribute(message, dead_letter::SOURCE_QUEUE))
                .unwrap_or(&self.source_queue),
        };
        let class = failure_class(findings.hint.is_some(), process);
        FailureRecord {
            first_attempt_at_ms: process.map(|r| r.created_at_ms),
            last_attempt_at_ms: process.map(|r| r.updated_at_ms),
            last_error: last_error(process, given_up, findings.resolution.as_ref()).map(|e| stored_error(&e)),
            state: match (findings.settled(), &findings.resolution) {
                (Some(r), _) => FailureState::Closed {
                    at_ms: now,
                    note: format!("payment already settled ({})", r.status.as_str()),
                },
                (None, Some(Resolution::Charged(charge_id))) => FailureState::Closed {
                    at_ms: now,
                    note: format!("resolved: charged ({charge_id}); the payment is completed with that charge"),
                },
                (None, _) => FailureState::Open,
            },
            ..FailureRecord::open(FailureKind::DeadLetter, failed, class, now)
        }
    }
}

/// Counts what became of a dead message; `age_s` is how long it had been in the queues.
fn count_outcome(metrics: &Metrics, outcome: &DeadLetterFate, age_s: Option<f64>) {
    match outcome {
        DeadLetterFate::Recorded { class } => {
            metrics.count("DeadLettered", 1);
            metrics.count_with("DeadLettered", 1, &[("FailureClass", class)]);
            if let Some(age) = age_s {
                metrics.observe("AgeAtDeadLetter", Unit::Seconds, age);
            }
        }
        DeadLetterFate::AlreadySettled => metrics.count("DeadLetteredSettled", 1),
        DeadLetterFate::ResolvedCharged { .. } => metrics.count("DeadLetterResolvedCharged", 1),
        DeadLetterFate::Duplicate => metrics.count("DeadLetterDuplicate", 1),
        DeadLetterFate::NotRecorded { .. } => metrics.count("DeadLetterRecordFailed", 1),
    }
}

/// The structured event operators search for: one per dead message recorded.
fn log_recorded(record: &FailureRecord, outcome: &DeadLetterFate) {
    tracing::warn!(
        event = "payment_dead_lettered",
        message_id = record.message_id,
        scope = record.scope.as_ref().map(|s| s.as_str()).unwrap_or(""),
        idempotency_key = record.idempotency_key.as_ref().map(|k| k.as_str()).unwrap_or(""),
        failure_class = record.failure_class,
        last_error = record.last_error.as_deref().unwrap_or(""),
        receive_count = record.receive_count,
        first_attempt_at = record.first_attempt_at_ms.map(rfc3339_ms).unwrap_or_default(),
        last_attempt_at = record.last_attempt_at_ms.map(rfc3339_ms).unwrap_or_default(),
        source_queue = record.source_queue,
        outcome = ?outcome,
        "dead-lettered payment message recorded"
    );
}

impl<S: IdempotencyStore, F: FailureStore, V: VisibilityControl, G: PaymentGateway> DlqConsumer<S, F, V, G> {
    /// What the provider holds for a payment that is not settled: the processor's own answer
    /// when it asked just before giving up, otherwise the resolver's (which records a charge it
    /// finds on the payment). `Err` when unknown: record nothing now, retry the dead message.
    async fn resolve(
        &self,
        payment: &PaymentMessage,
        message: &SqsMessage,
        metrics: &Metrics,
    ) -> Result<Resolution, NotRecordedYet> {
        if message_attribute(message, dead_letter::RESOLUTION) == Some("not_charged") {
            return Ok(Resolution::NotCharged);
        }
        let resolution = self.resolver.resolve(payment).await;
        metrics.count_with("OutcomeLookup", 1, &[("Result", resolution.label())]);
        match resolution {
            Resolution::Unknown(detail) => Err(NotRecordedYet::OutcomeUnknown(detail)),
            Resolution::KeyRefused(detail) => Err(NotRecordedYet::KeyRefused(detail)),
            known => Ok(known),
        }
    }
}

/// The low-cardinality class of a dead message: the processor's last error reason when it has
/// one, otherwise what is known of the message.
fn failure_class(has_key: bool, process: Option<&IdempotencyRecord>) -> String {
    match (has_key, process) {
        (false, _) => "unparseable".into(),
        (true, None) => "never_processed".into(),
        (true, Some(r)) => r.last_error.clone().filter(|e| is_low_cardinality(e)).unwrap_or_else(|| "unknown".into()),
    }
}

/// Reasons the processor stores are short snake_case codes; anything else is not a dimension.
fn is_low_cardinality(reason: &str) -> bool {
    reason.len() <= 64 && reason.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The processor's last error, prefixed by why the processor gave the payment up when it did
/// (rather than SQS after maxReceiveCount), and followed by what the provider was found to hold.
fn last_error(
    process: Option<&IdempotencyRecord>,
    given_up: Option<&str>,
    resolution: Option<&Resolution>,
) -> Option<String> {
    let last = process.and_then(|r| r.last_error.clone());
    let told = match (given_up, last) {
        (Some(why), Some(last)) => Some(format!("{why} after {} attempts; last error: {last}", attempts_of(process))),
        (Some(why), None) => Some(why.to_owned()),
        (None, last) => last,
    };
    let found = match resolution {
        Some(Resolution::Charged(charge_id)) => Some(format!("charged ({charge_id})")),
        Some(Resolution::NotCharged) => Some("not charged".to_owned()),
        Some(Resolution::Unknown(_) | Resolution::KeyRefused(_)) | None => None,
    };
    match (told, found) {
        (Some(told), Some(found)) => Some(format!("{told}; provider: {found}")),
        (told, found) => told.or(found),
    }
}

fn attempts_of(process: Option<&IdempotencyRecord>) -> u32 {
    process.map_or(0, |r| r.attempts)
}

fn attribute<'a>(message: &'a SqsMessage, name: &str) -> Option<&'a str> {
    message.attributes.get(name).map(String::as_str)
}

fn message_attribute<'a>(message: &'a SqsMessage, name: &str) -> Option<&'a str> {
    message.message_attributes.get(name).and_then(|v| v.string_value.as_deref())
}

impl<S: IdempotencyStore, F: FailureStore, V: VisibilityControl, G: PaymentGateway> MessageHandler
    for DlqConsumer<S, F, V, G>
{
    type Fate = DeadLetterFate;

    async fn handle_message(&self, message: &SqsMessage, invocation: &Invocation<'_>) -> DeadLetterFate {
        let metrics = invocation.metrics();
        self.record(message, metrics).await.unwrap_or_else(|error| {
            tracing::error!(%error, "could not record a dead message; it will be retried");
            let outcome = DeadLetterFate::NotRecorded {
                error: error.to_string(),
                after: self.jitter.delay(&self.backoff, receive_count(message).unwrap_or(1)),
            };
            count_outcome(metrics, &outcome, None);
            outcome
        })
    }
}
