//! The processor: for each SQS record, claim the payment's idempotency record, charge with the
//! scoped key, then complete, fail permanently or release and back off.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::LambdaEvent;
use payments_core::clock::{Clock, epoch_ms};
use payments_core::failures::{FailureKind, FailureRecord, FailureState, FailureStore, failure_partition};
use payments_core::idempotency::{
    ClaimOutcome, Idempotency, IdempotencyRecord, IdempotencyStore, Lease, PayloadHash, RecordStatus, Settlement,
    StoredFailure,
};
use payments_core::observability::{Metrics, MetricsSink, Unit};
use payments_core::payment::{
    ChargeRequest, ChargeResult, EnvelopeError, GatewayError, KeyHint, PaymentGateway, PaymentMessage, RetryableKind,
    process_key, provider_idempotency_key,
};
use payments_core::sqs::{
    Backoff, BatchRunner, Jitter, RecordHandler, RecordOutcome, RecordResult, VisibilityControl, receive_count,
};

/// Everything the processor builds once per cold start.
pub struct Processor<S, F, G, V> {
    /// Idempotency records of operation `process`.
    pub idempotency: Idempotency<S>,
    /// Where poison messages are recorded.
    pub failures: F,
    /// The payment provider.
    pub gateway: G,
    /// Runs the batch.
    pub runner: BatchRunner<V>,
    /// Waits between retries.
    pub backoff: Backoff,
    /// Randomness of those waits.
    pub jitter: Jitter,
    /// Metrics namespace and cold-start flag.
    pub metrics: MetricsSink,
    /// Time.
    pub clock: Arc<dyn Clock>,
}

/// What became of one record: decides deletion, logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Charged now.
    Charged {
        /// The provider's charge id.
        charge_id: String,
    },
    /// Already settled by an earlier delivery: nothing done.
    Duplicate,
    /// A retryable failure: hidden for `after`, then redelivered.
    Retry {
        /// Low-cardinality reason.
        reason: String,
        /// Visibility delay.
        after: Duration,
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

impl Handled {
    fn outcome(&self) -> RecordOutcome {
        match self {
            Self::Retry { after, .. } => RecordOutcome::RetryAfter { after: *after },
            _ => RecordOutcome::Done,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Charged { .. } => "charged",
            Self::Duplicate => "duplicate",
            Self::Retry { .. } => "retry",
            Self::FailedPermanently { .. } => "failed_permanently",
            Self::Poison { .. } => "poison",
        }
    }
}

impl<S, F, G, V> Processor<S, F, G, V>
where
    S: IdempotencyStore,
    F: FailureStore,
    G: PaymentGateway,
    V: VisibilityControl,
{
    /// The Lambda handler: a partial batch response, never an error (failures are per record).
    pub async fn handle(&self, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        let deadline_ms = payments_core::clock::invocation_deadline_ms(event.context.deadline, self.clock.now_ms());
        Ok(self.process_batch(&event.payload.records, deadline_ms, &event.context.request_id).await.response)
    }

    /// Processes `records` before `deadline_ms`, flushing this invocation's metrics at the end.
    pub async fn process_batch(&self, records: &[SqsMessage], deadline_ms: i64, request_id: &str) -> BatchSummary {
        let metrics = self.metrics.invocation();
        metrics.property("RequestId", request_id);
        let invocation = Invocation { processor: self, metrics: &metrics, deadline_ms, handled: Mutex::default() };
        let report = self.runner.run(records, deadline_ms, self.clock.as_ref(), &invocation).await;
        for (result, name) in
            [(RecordResult::Panicked, "RecordPanicked"), (RecordResult::NotStarted, "RecordNotStarted")]
        {
            let n = report.count(&result);
            if n > 0 {
                metrics.count(name, n as u64);
            }
        }
        metrics.flush();
        let handled = invocation.handled.into_inner().unwrap_or_else(|p| p.into_inner());
        BatchSummary { response: report.response, handled }
    }

    /// Executes one valid payment message.
    async fn execute(&self, message: &PaymentMessage, receive_count: u32, deadline_ms: i64) -> Handled {
        let key = process_key(&message.scope, &message.idempotency_key);
        let hash = match PayloadHash::of(&message.payment) {
            Ok(hash) => hash,
            Err(e) => return Handled::Poison { code: "unhashable_payload".into(), detail: e.to_string() },
        };
        let lease = match self.idempotency.claim(&key, &hash, deadline_ms).await {
            Ok(ClaimOutcome::Claimed(lease)) => lease,
            Ok(ClaimOutcome::AlreadyCompleted { .. } | ClaimOutcome::AlreadyFailed(_)) => return Handled::Duplicate,
            Ok(ClaimOutcome::InProgressElsewhere { lease_until_ms }) => {
                // Another worker holds it: come back when its lease ends, not sooner.
                let wait_ms = u64::try_from(lease_until_ms.saturating_sub(self.clock.now_ms())).unwrap_or(0);
                let after = Duration::from_millis(wait_ms).max(Duration::from_secs(1)).min(self.backoff.cap());
                return Handled::Retry { reason: "in_progress_elsewhere".into(), after: round_up_secs(after) };
            }
            Ok(ClaimOutcome::PayloadMismatch) => {
                return Handled::Poison {
                    code: "idempotency_key_reused".into(),
                    detail: "this idempotency key was used before for a different payment".into(),
                };
            }
            Err(e) => return self.retry("idempotency_store_unavailable", &e.to_string(), receive_count, None),
        };
        let request = ChargeRequest {
            idempotency_key: provider_idempotency_key(&message.scope, &message.idempotency_key),
            amount: message.payment.amount,
            currency: message.payment.currency,
            payment_method: message.payment.payment_method.clone(),
            merchant_reference: message.payment.merchant_reference.clone(),
            metadata: message.payment.metadata.clone(),
        };
        match self.gateway.charge(&request).await {
            Ok(charge) => {
                let result =
                    ChargeResult { charge_id: charge.id.clone(), amount: charge.amount, currency: charge.currency };
                let stored = serde_json::to_value(&result).expect("a charge result serialises");
                match self.idempotency.complete(&lease, &stored).await {
                    Ok(Settlement::Recorded) => Handled::Charged { charge_id: charge.id },
                    Ok(Settlement::NotOwner { current }) => {
                        self.lost_lease(current.as_deref(), &charge.id, receive_count)
                    }
                    Err(e) => self.retry("completion_not_recorded", &e.to_string(), receive_count, None),
                }
            }
            Err(ref error @ GatewayError::Retryable { ref kind, ref detail }) => {
                let reason = error.reason();
                self.settle_release(&lease, &reason).await;
                let floor = match kind {
                    RetryableKind::RateLimited { retry_after } => *retry_after,
                    _ => None,
                };
                self.retry(&reason, detail, receive_count, floor)
            }
            Err(permanent) => {
                let failure = StoredFailure { code: permanent.reason(), reason: permanent.to_string() };
                match self.idempotency.fail_permanently(&lease, failure).await {
                    Ok(Settlement::Recorded) => Handled::FailedPermanently { code: permanent.reason() },
                    Ok(Settlement::NotOwner { current }) => {
                        self.lost_lease(current.as_deref(), &permanent.reason(), receive_count)
                    }
                    Err(e) => self.retry("failure_not_recorded", &e.to_string(), receive_count, None),
                }
            }
        }
    }

    /// Our lease lapsed and another worker took the record over before we could settle it. If
    /// that worker settled it, this copy is a duplicate. Otherwise the outcome we hold is not
    /// recorded anywhere yet: keep the message and retry (the provider's key makes the retry
    /// return this same outcome), rather than trust the new owner to finish — it may fail
    /// retryably and dead-letter, as the model checker showed.
    fn lost_lease(&self, current: Option<&IdempotencyRecord>, outcome: &str, receive_count: u32) -> Handled {
        match current {
            Some(record) if record.status != RecordStatus::InProgress => Handled::Duplicate,
            _ => {
                tracing::warn!(outcome, "lease lost before settling; retrying so the outcome gets recorded");
                self.retry("lease_lost", outcome, receive_count, None)
            }
        }
    }

    async fn settle_release(&self, lease: &Lease, reason: &str) {
        // If this fails the lease simply runs out; the retry then takes the record over.
        if let Err(e) = self.idempotency.release(lease, reason).await {
            tracing::warn!(error = %e, "could not release the claim; it frees itself when the lease ends");
        }
    }

    fn retry(&self, reason: &str, detail: &str, receive_count: u32, floor: Option<Duration>) -> Handled {
        let drawn = self.jitter.delay(&self.backoff, receive_count);
        let after = floor.map_or(drawn, |f| drawn.max(f)).min(self.backoff.cap());
        tracing::info!(reason, detail, retry_in_s = after.as_secs(), "retryable failure");
        Handled::Retry { reason: reason.to_owned(), after }
    }

    /// A message that does not parse: when its key can still be read, fail its payment record
    /// (the status then shows FAILED with the reason). Never retried, unless recording fails.
    async fn invalid(&self, body: &str, error: &EnvelopeError, receive_count: u32, deadline_ms: i64) -> Handled {
        if let Some(hint) = KeyHint::find(body) {
            let key = process_key(&hint.scope, &hint.idempotency_key);
            match self.idempotency.claim(&key, &PayloadHash::of_bytes(body.as_bytes()), deadline_ms).await {
                Ok(ClaimOutcome::Claimed(lease)) => {
                    let failure = StoredFailure { code: error.code().into(), reason: error.to_string() };
                    if let Err(e) = self.idempotency.fail_permanently(&lease, failure).await {
                        return self.retry("failure_not_recorded", &e.to_string(), receive_count, None);
                    }
                }
                // A valid payment owns this key, or it is settled: leave its record alone.
                Ok(_) => {}
                Err(e) => return self.retry("idempotency_store_unavailable", &e.to_string(), receive_count, None),
            }
        }
        Handled::Poison { code: error.code().to_owned(), detail: error.to_string() }
    }

    /// Writes the failure record of a poison message, for operators; a store failure turns the
    /// outcome into a retry so that nothing is lost.
    async fn record_poison(&self, sqs: &SqsMessage, body: &str, handled: Handled, receive_count: u32) -> Handled {
        let Handled::Poison { code, detail } = &handled else { return handled };
        let hint = KeyHint::find(body);
        let message_id = sqs.message_id.clone().unwrap_or_default();
        let now = self.clock.now_ms();
        let record = FailureRecord {
            partition: failure_partition(hint.as_ref(), &message_id),
            message_id,
            scope: hint.as_ref().map(|h| h.scope.clone()),
            idempotency_key: hint.as_ref().map(|h| h.idempotency_key.clone()),
            body: body.to_owned(),
            receive_count,
            first_attempt_at_ms: None,
            last_attempt_at_ms: Some(now),
            last_error: Some(detail.clone()),
            failure_class: code.clone(),
            source_queue: sqs.event_source_arn.clone().unwrap_or_default(),
            recorded_at_ms: now,
            kind: FailureKind::Poison,
            state: FailureState::Open,
        };
        match self.failures.record(&record).await {
            Ok(_) => handled,
            Err(e) => self.retry("failure_not_recorded", &e.to_string(), receive_count, None),
        }
    }
}

fn round_up_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_millis().div_ceil(1000) as u64)
}

/// What a batch came to: the response for Lambda, and what became of each record the handler
/// ran (by message id), for tests, tools and the benchmark.
#[derive(Debug, Clone, Default)]
pub struct BatchSummary {
    /// The partial batch response.
    pub response: SqsBatchResponse,
    /// Each handled record's outcome (records not started or panicked are absent).
    pub handled: Vec<(String, Handled)>,
}

/// One invocation's view: the processor, its metrics buffer and its deadline.
struct Invocation<'a, S, F, G, V> {
    processor: &'a Processor<S, F, G, V>,
    metrics: &'a Metrics,
    deadline_ms: i64,
    handled: Mutex<Vec<(String, Handled)>>,
}

impl<S, F, G, V> RecordHandler for Invocation<'_, S, F, G, V>
where
    S: IdempotencyStore,
    F: FailureStore,
    G: PaymentGateway,
    V: VisibilityControl,
{
    async fn handle(&self, sqs: &SqsMessage) -> RecordOutcome {
        let started = Instant::now();
        let receive_count = receive_count(sqs).unwrap_or(1);
        let body = sqs.body.as_deref().unwrap_or("");
        let parsed = PaymentMessage::parse(body);
        let handled = match &parsed {
            Ok(message) => self.processor.execute(message, receive_count, self.deadline_ms).await,
            Err(error) => self.processor.invalid(body, error, receive_count, self.deadline_ms).await,
        };
        let handled = self.processor.record_poison(sqs, body, handled, receive_count).await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.record_metrics(&handled, elapsed_ms, parsed.as_ref().ok());

        let (key, scope, correlation_id) = match &parsed {
            Ok(m) => (m.idempotency_key.as_str(), m.scope.as_str(), m.correlation_id.as_str()),
            Err(_) => ("", "", ""),
        };
        let reason = match &handled {
            Handled::Retry { reason, .. } => reason.as_str(),
            Handled::FailedPermanently { code } | Handled::Poison { code, .. } => code.as_str(),
            Handled::Charged { charge_id } => charge_id.as_str(),
            Handled::Duplicate => "",
        };
        tracing::info!(
            idempotency_key = key,
            scope,
            correlation_id,
            message_id = sqs.message_id.as_deref().unwrap_or(""),
            receive_count,
            outcome = handled.label(),
            reason,
            duration_ms = elapsed_ms,
            "record processed"
        );
        let outcome = handled.outcome();
        let id = sqs.message_id.clone().unwrap_or_default();
        self.handled.lock().unwrap_or_else(|p| p.into_inner()).push((id, handled));
        outcome
    }
}

impl<S, F, G, V> Invocation<'_, S, F, G, V> {
    fn record_metrics(&self, handled: &Handled, elapsed_ms: f64, message: Option<&PaymentMessage>) {
        let m = self.metrics;
        m.observe("ProcessingLatency", Unit::Milliseconds, elapsed_ms);
        match handled {
            Handled::Charged { .. } => {
                m.count("Processed", 1);
                if let Some(accepted) = message.and_then(|msg| humantime::parse_rfc3339(&msg.created_at).ok()) {
                    let age_ms = (self.processor.clock.now_ms() - epoch_ms(accepted)).max(0);
                    m.observe("PaymentLatency", Unit::Milliseconds, age_ms as f64);
                }
            }
            Handled::Duplicate => m.count("DuplicateSuppressed", 1),
            Handled::Retry { reason, .. } => {
                m.count("Retried", 1);
                m.count_with("Failure", 1, &[("Reason", reason)]);
            }
            Handled::FailedPermanently { code } => {
                m.count("FailedPermanently", 1);
                m.count_with("Failure", 1, &[("Reason", code)]);
            }
            Handled::Poison { code, .. } => {
                m.count("Poison", 1);
                m.count_with("Failure", 1, &[("Reason", code)]);
            }
        }
    }
}
