//! The processor's rule: for each payment message, ask the provider's circuit breaker, claim the
//! payment's idempotency record, charge with the scoped key, then complete, fail permanently, or
//! release and back off — or, when the payment's retry budget or age runs out, find out whether
//! it was charged and only then give it up. Messages that are not payments go to `poison`;
//! giving up, to `give_up`.

mod give_up;
mod poison;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use fleet_breaker::{CircuitBreaker, Permit};
use lambda_idempotency::{
    ClaimOutcome, Idempotency, IdempotencyRecord, Lease, PayloadHash, RecordStatus, Recovery, Settlement, StoredFailure,
};
use lambda_observability::{Metrics, MetricsSink, xray};
use lambda_runtime::LambdaEvent;
use lambda_sqs_batch::{BatchReport, BatchRunner, Invocation, Jitter, MessageHandler, SqsFunction};
use lambda_support::clock::Clock;
use payments_core::budget::{RetryBudget, Verdict};
use payments_core::failures::close_open_records;
use payments_core::pacing::Pacer;
use payments_core::payment::{
    Charge, ChargeRequest, ChargeResult, EnvelopeError, GatewayError, PaymentMessage, RetryableKind, process_key,
};
use tracing::Instrument;

use crate::config::ProcessorConfig;
use crate::delivery::{Delivery, accepted_ms, charge_request, hint_of};
use crate::fate::PaymentFate;
use crate::ports::{Adapters, Ports};
use crate::provider::{Blame, Provider};
use crate::waits::Waits;

pub use poison::VERSION_WAIT_RECEIVES;

/// Everything the processor builds once per cold start.
pub struct Processor<A: Adapters> {
    idempotency: Idempotency<A::Store>,
    failures: A::Failures,
    provider: Provider<A::Gateway, A::Breaker>,
    sqs: SqsFunction<A::Visibility>,
    dead_letters: A::DeadLetters,
    budget: RetryBudget,
    waits: Waits,
    clock: Arc<dyn Clock>,
}

/// What a release gives back of the payment's retry budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refund {
    /// Nothing: the failure was this payment's.
    No,
    /// The attempt: the failure was not this payment's (the breaker blames the provider, the
    /// provider had no room, or nothing was sent).
    Attempt,
    /// The claim of a delivery that only asked the provider (no charge was tried).
    LookupOnly,
}

/// One claimed attempt at a payment: what each step after the claim needs.
struct Attempt<'a> {
    message: &'a PaymentMessage,
    delivery: &'a Delivery<'a>,
    lease: Lease,
    permit: Permit,
    metrics: &'a Metrics,
    request: ChargeRequest,
}

/// What a batch came to: the response for Lambda, and each message's fate.
pub type BatchSummary = BatchReport<PaymentFate>;

impl<A: Adapters> Processor<A> {
    /// Assembles a processor from its adapters and validated configuration, on the real clock,
    /// with jitter from the OS unless replaced ([`Self::with_jitter`]).
    pub fn new(ports: Ports<A>, config: &ProcessorConfig) -> Self {
        Self::with_clock(ports, config, Arc::new(lambda_support::clock::SystemClock))
    }

    /// The same, on another clock (tests move time by hand).
    pub fn with_clock(ports: Ports<A>, config: &ProcessorConfig, clock: Arc<dyn Clock>) -> Self {
        let metrics = MetricsSink::new(&config.metrics_namespace, "processor");
        let breaker = CircuitBreaker::new(ports.breaker, config.breaker.clone(), clock.clone());
        let pacer = Pacer::new(config.provider_rate, clock.clone());
        Self {
            idempotency: Idempotency::with_clock(ports.store, config.idempotency, clock.clone()),
            failures: ports.failures,
            provider: Provider::new(ports.gateway, breaker, pacer, config.batch.start_margin, clock.clone()),
            sqs: SqsFunction::with_clock(config.batch, ports.visibility, metrics, clock.clone()),
            dead_letters: ports.dead_letters,
            budget: config.budget,
            waits: Waits::new(config.backoff, config.breaker.clone(), clock.clone()),
            clock,
        }
    }

    /// The same, with a reproducible jitter (tests).
    pub fn with_jitter(self, jitter: Jitter) -> Self {
        Self { waits: self.waits.with_jitter(jitter), ..self }
    }

    /// The idempotency guard (tests and tools read records through it).
    pub fn idempotency(&self) -> &Idempotency<A::Store> {
        &self.idempotency
    }

    /// Where poison messages are recorded.
    pub fn failures(&self) -> &A::Failures {
        &self.failures
    }

    /// The provider adapter.
    pub fn gateway(&self) -> &A::Gateway {
        self.provider.gateway()
    }

    /// The batch runner (its visibility adapter records calls in tests).
    pub fn runner(&self) -> &BatchRunner<A::Visibility> {
        self.sqs.runner()
    }

    /// The circuit breaker.
    pub fn breaker(&self) -> &CircuitBreaker<A::Breaker> {
        self.provider.breaker()
    }

    /// The dead-letter adapter.
    pub fn dead_letters(&self) -> &A::DeadLetters {
        &self.dead_letters
    }

    /// The Lambda handler: a partial batch response, never an error (failures are per message).
    pub async fn handle(&self, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        self.sqs.handle(event, self).await
    }

    /// Processes `records` before `deadline_ms`: what became of each, for tests, tools and the
    /// benchmark.
    pub async fn process_batch(&self, records: &[SqsMessage], deadline_ms: i64, request_id: &str) -> BatchSummary {
        self.sqs.process_batch(records, deadline_ms, request_id, self).await
    }

    /// One message's fate, decided in one place: a payment is executed; a message of a newer
    /// schema waits for the processor that reads it; anything else is poison.
    async fn decide(
        &self,
        delivery: &Delivery<'_>,
        parsed: &Result<PaymentMessage, EnvelopeError>,
        metrics: &Metrics,
    ) -> PaymentFate {
        match parsed {
            Ok(message) => self.execute(message, delivery, metrics).await,
            Err(error @ EnvelopeError::UnsupportedVersion(_)) => self.unsupported_version(error, delivery).await,
            Err(error) => self.invalid(error, delivery).await,
        }
    }

    /// Executes one valid payment message.
    async fn execute(&self, message: &PaymentMessage, delivery: &Delivery<'_>, metrics: &Metrics) -> PaymentFate {
        let key = process_key(&message.scope, &message.idempotency_key);
        let hash = match PayloadHash::of(&message.payment) {
            Ok(hash) => hash,
            Err(e) => {
                return self.poison(delivery, Some(&hint_of(message)), "unhashable_payload", &e.to_string()).await;
            }
        };
        let permit = match self.provider.admit(metrics).await {
            Ok(permit) => permit,
            Err((until_ms, phase)) => {
                let after = self.waits.breaker(until_ms, phase);
                return PaymentFate::Deferred { reason: format!("circuit_{}", phase.as_str()), after };
            }
        };
        // Past the payment's maximum age no delivery retries it: if the record is still
        // IN_PROGRESS then, and stays untouched, its message is gone and the completer takes over.
        let now = self.clock.now_ms();
        let age_limit =
            now.saturating_sub(as_ms(delivery.age(message, now))).saturating_add(as_ms(self.budget.max_age()));
        let recovery = Recovery { due_ms: age_limit, input: None };
        let claim = self.idempotency.claim_recoverable(&key, &hash, delivery.deadline_ms, Some(recovery));
        let lease = match claim.instrument(tracing::info_span!(target: xray::TARGET, "claim")).await {
            Ok(ClaimOutcome::Claimed(lease)) => lease,
            other => {
                // No call after all: a probe lease goes back at once.
                self.provider.unused(&permit).await;
                return self.not_claimed(other, message, delivery).await;
            }
        };
        let attempt = Attempt { message, delivery, lease, permit, metrics, request: charge_request(message) };
        // Out of budget or too old already (the last try's outcome was unknown): only ask.
        let spent = delivery.spent(attempt.lease.attempt - 1);
        if let Verdict::GiveUp(why) = self.budget.verdict(spent, delivery.age(message, now), Duration::ZERO) {
            // A rare path: one read keeps the last provider error for the dead letter.
            let stored = self.idempotency.get(&attempt.lease.key).await.ok().flatten();
            let last_error = stored.and_then(|r| r.last_error).unwrap_or_else(|| why.as_str().to_owned());
            return self.resolve_before_giving_up(&attempt, why, &last_error, Refund::LookupOnly).await;
        }
        self.charge(&attempt).await
    }

    /// Charges and settles by the answer. A charge with no provider slot left in this invocation
    /// is not sent: its claim goes back, refunded.
    async fn charge(&self, attempt: &Attempt<'_>) -> PaymentFate {
        let (permit, deadline) = (&attempt.permit, attempt.delivery.deadline_ms);
        let charged = match self.provider.charge(permit, &attempt.request, deadline, attempt.metrics).await {
            Ok(charged) => charged,
            Err(free_in) => {
                self.release(&attempt.lease, "provider_rate", Refund::Attempt).await;
                return PaymentFate::Deferred { reason: "provider_rate".into(), after: self.waits.rate(free_in) };
            }
        };
        match charged {
            Ok(charge) => self.complete(attempt, charge).await,
            Err(ref error @ GatewayError::Retryable { ref kind, ref detail }) => {
                self.after_retryable(attempt, kind, &error.reason(), detail).await
            }
            Err(permanent) => self.fail(attempt, &permanent).await,
        }
    }

    async fn complete(&self, attempt: &Attempt<'_>, charge: Charge) -> PaymentFate {
        let result = ChargeResult { charge_id: charge.id.clone(), amount: charge.amount, currency: charge.currency };
        let stored = serde_json::to_value(&result).expect("a charge result serialises");
        let settle = self.idempotency.complete(&attempt.lease, &stored);
        match settle.instrument(tracing::info_span!(target: xray::TARGET, "settle")).await {
            Ok(Settlement::Recorded) => {
                if attempt.lease.resumed {
                    let note = format!("the payment succeeded later (charge {})", charge.id);
                    self.close_failure_records(attempt.message, &note).await;
                }
                PaymentFate::Charged { charge_id: charge.id }
            }
            Ok(Settlement::NotOwner { current }) => self.lost_lease(current.as_deref(), &charge.id, attempt),
            Err(e) => self.retry("completion_not_recorded", &e.to_string(), attempt.delivery.receive_count, None),
        }
    }

    /// A permanent failure (a decline, a rejection): stored, never retried.
    async fn fail(&self, attempt: &Attempt<'_>, permanent: &GatewayError) -> PaymentFate {
        let failure = StoredFailure { code: permanent.reason(), detail: permanent.to_string() };
        let settle = self.idempotency.fail_permanently(&attempt.lease, failure);
        match settle.instrument(tracing::info_span!(target: xray::TARGET, "settle")).await {
            Ok(Settlement::Recorded) => {
                if attempt.lease.resumed {
                    let note = format!("the payment failed for good later ({})", permanent.reason());
                    self.close_failure_records(attempt.message, &note).await;
                }
                PaymentFate::FailedPermanently { code: permanent.reason() }
            }
            Ok(Settlement::NotOwner { current }) => self.lost_lease(current.as_deref(), &permanent.reason(), attempt),
            Err(e) => self.retry("failure_not_recorded", &e.to_string(), attempt.delivery.receive_count, None),
        }
    }

    /// What a refused claim means for this delivery.
    async fn not_claimed(
        &self,
        outcome: Result<ClaimOutcome, impl ToString>,
        message: &PaymentMessage,
        delivery: &Delivery<'_>,
    ) -> PaymentFate {
        match outcome {
            Ok(ClaimOutcome::Claimed(_)) => unreachable!("claimed outcomes are handled by the caller"),
            Ok(ClaimOutcome::AlreadyCompleted { .. } | ClaimOutcome::AlreadyFailed(_)) => {
                if delivery.grant.is_some() {
                    // A redriven copy of a payment that settled meanwhile: its record is done.
                    self.close_failure_records(message, "the payment was settled when its redrive arrived").await;
                }
                PaymentFate::Duplicate
            }
            Ok(ClaimOutcome::InProgressElsewhere { lease_until_ms }) => {
                // Another worker holds it: come back when its lease ends, not sooner.
                PaymentFate::Deferred {
                    reason: "in_progress_elsewhere".into(),
                    after: self.waits.lease(lease_until_ms),
                }
            }
            Ok(ClaimOutcome::PayloadMismatch) => {
                let detail = "this idempotency key was used before for a different payment";
                self.poison(delivery, Some(&hint_of(message)), "idempotency_key_reused", detail).await
            }
            Err(e) => self.retry("idempotency_store_unavailable", &e.to_string(), delivery.receive_count, None),
        }
    }

    /// A payment tried before may have been dead-lettered and recorded as not charged by an
    /// earlier copy; now that it is settled, its open failure records would tell operators a
    /// payment is dead that succeeded (found by the model checker). One query, on the retry path
    /// only.
    async fn close_failure_records(&self, message: &PaymentMessage, note: &str) {
        let (scope, key, now) = (&message.scope, &message.idempotency_key, self.clock.now_ms());
        if let Err(e) = close_open_records(&self.failures, scope, key, note, now).await {
            tracing::warn!(error = %e, "could not close the failure records of a settled payment");
        }
    }

    /// A retryable provider failure: retry after the backoff — or after the breaker's wait, when
    /// it is open — giving the attempt back when the breaker blames the provider (a failed probe,
    /// or a failure into an open circuit); once the budget is spent, resolve before giving up.
    async fn after_retryable(
        &self,
        attempt: &Attempt<'_>,
        kind: &RetryableKind,
        reason: &str,
        detail: &str,
    ) -> PaymentFate {
        let (lease, delivery) = (&attempt.lease, attempt.delivery);
        let blame = self.provider.blame(&attempt.permit, kind);
        // A 429 says the provider had no room, not that this payment failed, and an unreadable
        // key store sent nothing at all: neither costs an attempt, so a wave of them cannot
        // dead-letter anything (the payment's age still bounds it).
        let not_the_payments =
            matches!(kind, RetryableKind::RateLimited { .. } | RetryableKind::CredentialsUnavailable);
        let given_back = not_the_payments || matches!(blame, Blame::Provider { .. });
        let spent = delivery.spent(lease.attempt).saturating_sub(u32::from(given_back));
        let wait = match blame {
            Blame::Provider { circuit: Some((until_ms, phase)) } => self.waits.breaker(until_ms, phase),
            _ => self.waits.backoff(delivery.spent(lease.attempt).max(1), kind.retry_after()),
        };
        let refund = if given_back { Refund::Attempt } else { Refund::No };
        let age = delivery.age(attempt.message, self.clock.now_ms());
        match self.budget.verdict(spent, age, wait) {
            Verdict::Retry => {
                self.release(lease, reason, refund).await;
                tracing::info!(reason, detail, attempts = spent, retry_in_s = wait.as_secs(), "retryable failure");
                PaymentFate::Retry { reason: reason.to_owned(), after: wait }
            }
            Verdict::GiveUp(why) => self.resolve_before_giving_up(attempt, why, reason, refund).await,
        }
    }

    /// Gives the claim up; if this fails the lease simply runs out and the retry takes over.
    async fn release(&self, lease: &Lease, reason: &str, refund: Refund) {
        let released = async {
            match refund {
                Refund::No => self.idempotency.release(lease, reason).await,
                Refund::Attempt | Refund::LookupOnly => self.idempotency.release_refunded(lease, reason).await,
            }
        }
        .instrument(tracing::info_span!(target: xray::TARGET, "settle"))
        .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "could not release the claim; it frees itself when the lease ends");
        }
    }

    /// Our lease lapsed and another worker took the record over before we could settle it. If
    /// that worker settled it, this copy is a duplicate. Otherwise the outcome we hold is not
    /// recorded anywhere yet: keep the message and retry (the provider's key makes the retry
    /// return this same outcome), rather than trust the new owner to finish — it may fail
    /// retryably and dead-letter, as the model checker showed.
    fn lost_lease(&self, current: Option<&IdempotencyRecord>, outcome: &str, attempt: &Attempt<'_>) -> PaymentFate {
        match current {
            Some(record) if record.status != RecordStatus::InProgress => PaymentFate::Duplicate,
            _ => {
                tracing::warn!(outcome, "lease lost before settling; retrying so the outcome gets recorded");
                self.retry("lease_lost", outcome, attempt.delivery.receive_count, None)
            }
        }
    }

    fn retry(&self, reason: &str, detail: &str, receive_count: u32, floor: Option<Duration>) -> PaymentFate {
        let after = self.waits.backoff(receive_count, floor);
        tracing::info!(reason, detail, retry_in_s = after.as_secs(), "retryable failure");
        PaymentFate::Retry { reason: reason.to_owned(), after }
    }
}

impl<A: Adapters> MessageHandler for Processor<A> {
    type Fate = PaymentFate;

    /// Handles one message inside a span naming it, so that every line logged meanwhile (a
    /// warning deep in a retry included) carries the payment's identity at the top level; then
    /// counts and logs its fate.
    async fn handle_message(&self, sqs: &SqsMessage, invocation: &Invocation<'_>) -> PaymentFate {
        let started = Instant::now();
        let delivery = Delivery::of(sqs, invocation);
        let parsed = PaymentMessage::parse(delivery.body);
        let message = parsed.as_ref().ok();
        let span = tracing::info_span!(
            "message",
            idempotency_key = message.map_or("", |m| m.idempotency_key.as_str()),
            scope = message.map_or("", |m| m.scope.as_str()),
            correlation_id = message.map_or("", |m| m.correlation_id.as_str()),
            message_id = sqs.message_id.as_deref().unwrap_or(""),
            receive_count = delivery.receive_count,
        );
        async {
            let fate = self.decide(&delivery, &parsed, invocation.metrics()).await;
            let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            let age_ms = message.and_then(accepted_ms).map(|accepted| self.clock.now_ms() - accepted);
            fate.count(invocation.metrics(), elapsed_ms, age_ms);
            tracing::info!(
                outcome = fate.label(),
                reason = fate.reason(),
                duration_ms = elapsed_ms,
                "message processed"
            );
            fate
        }
        .instrument(span)
        .await
    }
}

fn as_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
