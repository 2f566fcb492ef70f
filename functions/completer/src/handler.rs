//! One sweep over the records whose recovery is due (up to the batch limit per operation, spread
//! over the index's shards, the earliest due first within each).
//!
//! - **intake** records (the intake claimed, kept the message it was about to enqueue, and never
//!   completed): claim the record as the intake's client retry would, enqueue the stored message,
//!   and complete the record with the same `202` body the intake would have stored. A client that
//!   retries later gets that `202` replayed; the processor deduplicates a message the dead intake
//!   did manage to send.
//! - **process** records (IN_PROGRESS past the payment's maximum age, and untouched for the quiet
//!   period, so no live message is hiding behind a backoff): a payment with a failure record
//!   belongs to an operator and is no longer watched; any other is re-enqueued from the message
//!   in its intake record, and the processor — which asks the provider before any verdict on a
//!   payment that old — settles it. Its recovery moves a quiet period on, so a slow queue does
//!   not collect copies.

use std::time::Duration;

use lambda_idempotency::{
    ClaimOutcome, Idempotency, IdempotencyRecord, IdempotencyStore, Operation, RecordKey, Settlement, StoreError,
};
use lambda_observability::MetricsSink;
use lambda_runtime::LambdaEvent;
use payments_core::failures::{FailureStore, FailureStoreError};
use payments_core::payment::status::{INTAKE_OPERATION, PROCESS_OPERATION};
use payments_core::payment::{EnqueueError, EnvelopeError, PaymentMessage, PaymentQueue, acceptance, intake_key};

use crate::config::CompleterConfig;

/// Time kept back at the end of an invocation: no record is started closer to the deadline.
const DEADLINE_MARGIN_MS: i64 = 2_000;

/// Finds and finishes abandoned records; built once per cold start.
pub struct Completer<S, F, Q> {
    idempotency: Idempotency<S>,
    failures: F,
    queue: Q,
    quiet: Duration,
    batch_limit: usize,
    metrics: MetricsSink,
}

/// What one sweep did, by outcome (also the function's answer, for operators and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Sweep {
    /// Intake records finished: their message enqueued and their acceptance completed.
    pub enqueued: u64,
    /// Processor records whose payment was sent to the queue again.
    pub re_enqueued: u64,
    /// Processor records of dead-lettered payments: left to an operator, no longer watched.
    pub dismissed: u64,
    /// Records found finished, still worked on, or not quiet yet: nothing to do now.
    pub skipped: u64,
    /// Records that cannot be redone (no stored message, or one that no longer parses): no
    /// longer watched, logged as errors for an operator (`ops stuck-intake` lists such intakes).
    pub unrecoverable: u64,
    /// Store or queue failures: the record stays due and the next run tries again.
    pub errors: u64,
}

/// What became of one due record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecoveryFate {
    Enqueued,
    ReEnqueued,
    Dismissed,
    Skipped,
    Unrecoverable,
}

impl RecoveryFate {
    fn label(self) -> &'static str {
        match self {
            Self::Enqueued => "enqueued",
            Self::ReEnqueued => "re_enqueued",
            Self::Dismissed => "dismissed",
            Self::Skipped => "skipped",
            Self::Unrecoverable => "unrecoverable",
        }
    }
}

impl Sweep {
    fn count(&mut self, outcome: Result<RecoveryFate, RecoveryError>) {
        let slot = match outcome {
            Ok(RecoveryFate::Enqueued) => &mut self.enqueued,
            Ok(RecoveryFate::ReEnqueued) => &mut self.re_enqueued,
            Ok(RecoveryFate::Dismissed) => &mut self.dismissed,
            Ok(RecoveryFate::Skipped) => &mut self.skipped,
            Ok(RecoveryFate::Unrecoverable) => &mut self.unrecoverable,
            Err(_) => &mut self.errors,
        };
        *slot += 1;
    }
}

/// Why a due record was not recovered in this sweep: it stays due, and the next sweep tries again.
#[derive(Debug, thiserror::Error)]
enum RecoveryError {
    #[error("idempotency records unavailable: {0}")]
    Records(#[from] StoreError),
    #[error("failure records unavailable: {0}")]
    Failures(#[from] FailureStoreError),
    #[error("queue unavailable: {0}")]
    Queue(#[from] EnqueueError),
    #[error("enqueued, but the intake record was not completed: {0}")]
    NotCompleted(StoreError),
}

/// Why a record cannot be redone: there is no message to redo its payment from.
#[derive(Debug, thiserror::Error)]
enum NoMessage {
    #[error("no intake record")]
    NoIntakeRecord,
    #[error("no stored message (accepted before the completer existed)")]
    NotStored,
    #[error("{0}")]
    Unreadable(#[from] EnvelopeError),
}

impl<S: IdempotencyStore, F: FailureStore, Q: PaymentQueue> Completer<S, F, Q> {
    /// Assembles a completer from its adapters and validated configuration.
    pub fn new(idempotency: Idempotency<S>, failures: F, queue: Q, config: &CompleterConfig) -> Self {
        Self {
            idempotency,
            failures,
            queue,
            quiet: config.quiet,
            batch_limit: config.batch_limit,
            metrics: MetricsSink::new(&config.metrics_namespace, "completer"),
        }
    }

    /// The idempotency guard (tests read records through it).
    pub fn idempotency(&self) -> &Idempotency<S> {
        &self.idempotency
    }

    /// The Lambda handler: the scheduler's event carries nothing the sweep needs.
    pub async fn handle(&self, event: LambdaEvent<serde_json::Value>) -> Result<Sweep, lambda_runtime::Error> {
        let now = self.idempotency.now_ms();
        Ok(self.sweep(lambda_support::clock::invocation_deadline_ms(event.context.deadline, now)).await)
    }

    /// Handles every due record (up to the batch limit per operation) before `deadline_ms`.
    pub async fn sweep(&self, deadline_ms: i64) -> Sweep {
        let metrics = self.metrics.invocation();
        let mut sweep = Sweep::default();
        for operation in [INTAKE_OPERATION, PROCESS_OPERATION] {
            let operation = Operation::new(operation).expect("valid operation name");
            let due = match self.idempotency.due_for_recovery(&operation, self.batch_limit).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(operation = operation.as_str(), error = %e, "could not list due records");
                    sweep.errors += 1;
                    continue;
                }
            };
            for key in due {
                if self.idempotency.now_ms() + DEADLINE_MARGIN_MS > deadline_ms {
                    break;
                }
                let outcome = match operation.as_str() {
                    INTAKE_OPERATION => self.finish_intake(&key, deadline_ms).await,
                    _ => self.re_enqueue_payment(&key).await,
                };
                match &outcome {
                    Ok(recovered) => {
                        metrics.count_with("Recovery", 1, &[("Outcome", recovered.label())]);
                        if *recovered != RecoveryFate::Skipped {
                            tracing::info!(
                                record = %key,
                                idempotency_key = key.key.as_str(),
                                outcome = recovered.label(),
                                "abandoned record handled"
                            );
                        }
                    }
                    Err(e) => {
                        metrics.count_with("Recovery", 1, &[("Outcome", "error")]);
                        tracing::warn!(record = %key, idempotency_key = key.key.as_str(), error = %e, "recovery failed; next run retries");
                    }
                }
                sweep.count(outcome);
            }
        }
        metrics.flush();
        sweep
    }

    /// The intake's unfinished acceptance: claim, enqueue the stored message, complete.
    async fn finish_intake(&self, key: &RecordKey, deadline_ms: i64) -> Result<RecoveryFate, RecoveryError> {
        let now = self.idempotency.now_ms();
        let Some(record) = self.due_record(key, now).await? else { return Ok(RecoveryFate::Skipped) };
        let message = match stored_message(Some(&record)) {
            Ok(message) => message,
            Err(why) => return self.give_up(&record, &why.to_string()).await,
        };
        let lease = match self.idempotency.claim(key, &record.payload_hash, deadline_ms).await? {
            ClaimOutcome::Claimed(lease) => lease,
            // A client retry got there first (or holds it now).
            _ => return Ok(RecoveryFate::Skipped),
        };
        if let Err(e) = self.queue.enqueue(&message).await {
            if let Err(release) = self.idempotency.release(&lease, &e.detail).await {
                tracing::warn!(error = %release, "release failed; the lease frees the record when it ends");
            }
            return Err(e.into());
        }
        // Finished, and counted, only by the write that completes the acceptance: one enqueued
        // but not completed stays due, the next sweep enqueues it again (the processor
        // deduplicates the copy) and counts it then, once.
        match self.idempotency.complete(&lease, &acceptance(&message)).await {
            Ok(Settlement::Recorded) => Ok(RecoveryFate::Enqueued),
            Ok(Settlement::NotOwner { .. }) => Ok(RecoveryFate::Skipped),
            Err(e) => Err(RecoveryError::NotCompleted(e)),
        }
    }

    /// A processor record left behind: to the operator if dead-lettered, else back to the queue.
    async fn re_enqueue_payment(&self, key: &RecordKey) -> Result<RecoveryFate, RecoveryError> {
        let now = self.idempotency.now_ms();
        let Some(record) = self.due_record(key, now).await? else { return Ok(RecoveryFate::Skipped) };
        let quiet_ms = i64::try_from(self.quiet.as_millis()).unwrap_or(i64::MAX);
        if now - record.updated_at_ms < quiet_ms {
            // Touched recently: a message is still carrying it (a backoff, a lookup retry).
            return Ok(RecoveryFate::Skipped);
        }
        let failures = self.failures.for_payment(&key.scope, &key.key).await?;
        if !failures.is_empty() {
            self.idempotency.reschedule_recovery(&record, None).await?;
            return Ok(RecoveryFate::Dismissed);
        }
        let intake = self.idempotency.get(&intake_key(&key.scope, &key.key)).await?;
        let message = match stored_message(intake.as_ref()) {
            Ok(message) => message,
            Err(why) => return self.give_up(&record, &why.to_string()).await,
        };
        self.queue.enqueue(&message).await?;
        // Not before another quiet period: the processor claims it long before that.
        self.idempotency.reschedule_recovery(&record, Some(now.saturating_add(quiet_ms))).await?;
        Ok(RecoveryFate::ReEnqueued)
    }

    /// The record behind an index entry, if it is still due (the index lags the table).
    async fn due_record(&self, key: &RecordKey, now: i64) -> Result<Option<IdempotencyRecord>, RecoveryError> {
        let record = self.idempotency.get(key).await?;
        Ok(record.filter(|r| r.is_due_for_recovery(now)))
    }

    /// Stops watching `record`, which cannot be redone: an operator must settle it.
    async fn give_up(&self, record: &IdempotencyRecord, why: &str) -> Result<RecoveryFate, RecoveryError> {
        tracing::error!(
            record = record.partition_key,
            why,
            "abandoned record cannot be redone: an operator must settle it"
        );
        self.idempotency.reschedule_recovery(record, None).await?;
        Ok(RecoveryFate::Unrecoverable)
    }
}

/// The message kept in an intake record, or why there is none to redo the payment from.
fn stored_message(intake: Option<&IdempotencyRecord>) -> Result<PaymentMessage, NoMessage> {
    let intake = intake.ok_or(NoMessage::NoIntakeRecord)?;
    let input = intake.input.as_deref().ok_or(NoMessage::NotStored)?;
    Ok(PaymentMessage::parse(input)?)
}
