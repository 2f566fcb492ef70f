//! The processor: for each SQS record, ask the provider's circuit breaker, claim the payment's
//! idempotency record, charge with the scoped key, then complete, fail permanently, or release
//! and back off — or, when the payment's retry budget or age runs out, dead-letter it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::LambdaEvent;
use payments_core::breaker::{Admitted, BreakerStore, CallHealth, CircuitBreaker, Permit, Phase, Transition};
use payments_core::clock::{Clock, epoch_ms};
use payments_core::failures::{
    FailedMessage, FailureKind, FailureRecord, FailureStore, resolve_open_records, stored_error,
};
use payments_core::idempotency::{
    ClaimOutcome, Idempotency, IdempotencyRecord, IdempotencyStore, Lease, PayloadHash, RecordStatus, Recovery,
    Settlement, StoredFailure,
};
use payments_core::observability::{Metrics, MetricsSink, Unit, xray};
use payments_core::pacing::{Pacer, Reservation};
use payments_core::payment::http_gateway::PROVIDER_UNAUTHORIZED;
use payments_core::payment::{
    Charge, ChargeLookup, ChargeRequest, ChargeResult, EnvelopeError, GatewayError, KeyHint, Lookup, PaymentGateway,
    PaymentMessage, RedriveGrant, RetryableKind, process_key, provider_idempotency_key,
};
use payments_core::sqs::backoff::SQS_MAX_VISIBILITY;
use payments_core::sqs::{
    Backoff, BatchReport, BatchRunner, DeadLetter, DeadLetterQueue, Fate, GiveUpReason, Invocation, Jitter,
    RecordHandler, RetryBudget, SqsFunction, Verdict, VisibilityControl, receive_count,
};
use tracing::Instrument;

use crate::config::ProcessorConfig;

/// The adapters a processor runs on, named by one type so that the bounds are written once: the
/// deployed set ([`crate::Aws`]) and the in-memory sets of the tests.
pub trait Adapters: 'static {
    /// Idempotency records.
    type Store: IdempotencyStore;
    /// Failure records of poison messages.
    type Failures: FailureStore;
    /// The payment provider.
    type Gateway: PaymentGateway;
    /// Hiding messages for their backoff.
    type Visibility: VisibilityControl;
    /// The circuit breaker's shared state.
    type Breaker: BreakerStore;
    /// Where given-up payments go.
    type DeadLetters: DeadLetterQueue;
}

/// The adapter instances a processor is built from.
pub struct Ports<A: Adapters> {
    /// Idempotency records of operation `process`.
    pub store: A::Store,
    /// Failure records of poison messages.
    pub failures: A::Failures,
    /// The payment provider.
    pub gateway: A::Gateway,
    /// Visibility changes.
    pub visibility: A::Visibility,
    /// The breaker's shared state.
    pub breaker: A::Breaker,
    /// The dead-letter queue.
    pub dead_letters: A::DeadLetters,
}

/// Everything the processor builds once per cold start.
pub struct Processor<A: Adapters> {
    idempotency: Idempotency<A::Store>,
    failures: A::Failures,
    gateway: A::Gateway,
    sqs: SqsFunction<A::Visibility>,
    breaker: CircuitBreaker<A::Breaker>,
    dead_letters: A::DeadLetters,
    backoff: Backoff,
    budget: RetryBudget,
    jitter: Jitter,
    pacer: Pacer,
    call_time: Duration,
    clock: Arc<dyn Clock>,
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

impl Fate for Handled {
    /// A retry or a deferral comes back after its delay; every other fate is final.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Retry { after, .. } | Self::Deferred { after, .. } => Some(*after),
            _ => None,
        }
    }
}

impl Handled {
    fn label(&self) -> &'static str {
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

    fn reason(&self) -> &str {
        match self {
            Self::Retry { reason, .. } | Self::Deferred { reason, .. } | Self::DeadLettered { reason, .. } => reason,
            Self::FailedPermanently { code } | Self::Poison { code, .. } => code,
            Self::Charged { charge_id } => charge_id,
            Self::Duplicate => "",
        }
    }
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

const ZERO: Duration = Duration::ZERO;

/// Deliveries a message of an unknown schema version waits for a processor that reads it.
pub const VERSION_WAIT_RECEIVES: u32 = 10;

/// The SQS side of one record, as the decisions need it.
struct Delivery<'a> {
    sqs: &'a SqsMessage,
    body: &'a str,
    receive_count: u32,
    deadline_ms: i64,
    /// The fresh budget an operator's redrive gave the payment, when this delivery is one.
    grant: Option<RedriveGrant>,
}

impl<'a> Delivery<'a> {
    fn of(sqs: &'a SqsMessage, invocation: &Invocation<'_>) -> Self {
        let body = sqs.body.as_deref().unwrap_or("");
        let grant = RedriveGrant::from_attributes(|name| sqs.message_attributes.get(name)?.string_value.clone());
        Self { sqs, body, receive_count: receive_count(sqs).unwrap_or(1), deadline_ms: invocation.deadline_ms(), grant }
    }

    /// Of `attempts` provider attempts, those that count against the budget: since the redrive,
    /// when this delivery is one.
    fn spent(&self, attempts: u32) -> u32 {
        attempts.saturating_sub(self.grant.map_or(0, |g| g.attempts_before))
    }

    /// The message as a failure record names it, for the payment `hint` when it names one.
    fn failed<'h>(&'h self, hint: Option<&'h KeyHint>) -> FailedMessage<'h> {
        FailedMessage {
            message_id: self.sqs.message_id.as_deref().unwrap_or_default(),
            hint,
            body: self.body,
            receive_count: self.receive_count,
            source_queue: self.sqs.event_source_arn.as_deref().unwrap_or_default(),
        }
    }
}

impl<A: Adapters> Processor<A> {
    /// Assembles a processor from its adapters and validated configuration, on the real clock,
    /// with jitter from the OS unless replaced ([`Self::with_jitter`]).
    pub fn new(ports: Ports<A>, config: &ProcessorConfig) -> Self {
        Self::on_clock(ports, config, Arc::new(payments_core::clock::SystemClock))
    }

    /// The same, on another clock (tests move time by hand).
    pub fn on_clock(ports: Ports<A>, config: &ProcessorConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            idempotency: Idempotency::with_clock(ports.store, config.idempotency, clock.clone()),
            failures: ports.failures,
            gateway: ports.gateway,
            sqs: SqsFunction::new(
                config.batch,
                ports.visibility,
                MetricsSink::new(&config.metrics_namespace, "processor"),
                clock.clone(),
            ),
            breaker: CircuitBreaker::new(ports.breaker, config.breaker.clone(), clock.clone()),
            dead_letters: ports.dead_letters,
            backoff: config.backoff,
            budget: config.budget,
            jitter: Jitter::from_os(),
            pacer: Pacer::new(config.provider_rate, clock.clone()),
            call_time: config.batch.start_margin,
            clock,
        }
    }

    /// The same, with a reproducible jitter (tests).
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
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
        &self.gateway
    }

    /// The batch runner (its visibility adapter records calls in tests).
    pub fn runner(&self) -> &BatchRunner<A::Visibility> {
        self.sqs.runner()
    }

    /// The circuit breaker.
    pub fn breaker(&self) -> &CircuitBreaker<A::Breaker> {
        &self.breaker
    }

    /// The dead-letter adapter.
    pub fn dead_letters(&self) -> &A::DeadLetters {
        &self.dead_letters
    }

    /// The Lambda handler: a partial batch response, never an error (failures are per record).
    pub async fn handle(&self, event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        self.sqs.handle(event, self).await
    }

    /// Processes `records` before `deadline_ms`: what became of each, for tests, tools and the
    /// benchmark.
    pub async fn process_batch(&self, records: &[SqsMessage], deadline_ms: i64, request_id: &str) -> BatchSummary {
        self.sqs.process_batch(records, deadline_ms, request_id, self).await
    }

    /// One record's fate, decided in one place: a payment is executed; a message of a newer
    /// schema waits for the processor that reads it; anything else is poison.
    async fn decide(
        &self,
        delivery: &Delivery<'_>,
        parsed: &Result<PaymentMessage, EnvelopeError>,
        metrics: &Metrics,
    ) -> Handled {
        match parsed {
            Ok(message) => self.execute(message, delivery, metrics).await,
            Err(error @ EnvelopeError::UnsupportedVersion(_)) => self.unsupported_version(error, delivery).await,
            Err(error) => self.invalid(error, delivery).await,
        }
    }

    /// Executes one valid payment message.
    async fn execute(&self, message: &PaymentMessage, delivery: &Delivery<'_>, metrics: &Metrics) -> Handled {
        let key = process_key(&message.scope, &message.idempotency_key);
        let hash = match PayloadHash::of(&message.payment) {
            Ok(hash) => hash,
            Err(e) => {
                return self.poison(delivery, Some(&hint_of(message)), "unhashable_payload", &e.to_string()).await;
            }
        };
        let permit = match self.breaker.admit().await {
            Admitted::Go(permit) => permit,
            Admitted::Wait { until_ms, phase, opened_at_ms } => {
                metrics.observe("CircuitOpenFor", Unit::Seconds, self.seconds_since(opened_at_ms));
                let after = self.breaker_wait(until_ms, phase);
                return Handled::Deferred { reason: format!("circuit_{}", phase.as_str()), after };
            }
        };
        // Past the payment's maximum age no delivery retries it: if the record is still
        // IN_PROGRESS then, and stays untouched, its message is gone and the completer takes over.
        let age_limit = self
            .clock
            .now_ms()
            .saturating_sub(as_ms(self.age_of(message, delivery)))
            .saturating_add(as_ms(self.budget.max_age()));
        let recovery = Recovery { due_ms: age_limit, input: None };
        let claim = self.idempotency.claim_recoverable(&key, &hash, delivery.deadline_ms, Some(recovery));
        let lease = match claim.instrument(tracing::info_span!(target: xray::TARGET, "claim")).await {
            Ok(ClaimOutcome::Claimed(lease)) => lease,
            other => {
                // No call after all: a probe lease goes back at once.
                self.breaker.record(&permit, None).await;
                return self.not_claimed(other, message, delivery).await;
            }
        };
        let attempt = Attempt { message, delivery, lease, permit, metrics, request: charge_request(message) };
        // Out of budget or too old already (the last try's outcome was unknown): only ask.
        let (spent, age) = (delivery.spent(attempt.lease.attempt - 1), self.age_of(message, delivery));
        if let Verdict::GiveUp(why) = self.budget.verdict(spent, age, ZERO) {
            // A rare path: one read keeps the last provider error for the dead letter.
            let stored = self.idempotency.get(&attempt.lease.key).await.ok().flatten();
            let last_error = stored.and_then(|r| r.last_error).unwrap_or_else(|| why.as_str().to_owned());
            return self.resolve_before_giving_up(&attempt, why, &last_error, Refund::LookupOnly).await;
        }
        self.charge(&attempt).await
    }

    /// Charges, reports the call to the breaker, and settles by the answer. A charge with no
    /// provider slot left in this invocation is not sent: its claim goes back, refunded.
    async fn charge(&self, attempt: &Attempt<'_>) -> Handled {
        if let Err(free_in) = self.paced(attempt.delivery).await {
            self.breaker.record(&attempt.permit, None).await;
            self.release(&attempt.lease, "provider_rate", Refund::Attempt).await;
            let after = round_up_secs(free_in).max(Duration::from_secs(1)).min(self.backoff.cap());
            return Handled::Deferred { reason: "provider_rate".into(), after };
        }
        let charged =
            self.gateway.charge(&attempt.request).instrument(tracing::info_span!(target: xray::TARGET, "charge")).await;
        if matches!(attempt.permit, Permit::Probe(_)) {
            attempt.metrics.count("ProviderProbe", 1);
        }
        if let Some(transition) = self.breaker.record(&attempt.permit, provider_health(&charged)).await {
            count_transition(attempt.metrics, transition);
        }
        match charged {
            Ok(charge) => self.complete(attempt, charge).await,
            Err(ref error @ GatewayError::Retryable { ref kind, ref detail }) => {
                let floor = match kind {
                    RetryableKind::RateLimited { retry_after } => *retry_after,
                    _ => None,
                };
                self.after_retryable(attempt, kind, &error.reason(), detail, floor).await
            }
            Err(permanent) => self.fail(attempt, &permanent).await,
        }
    }

    /// A permanent failure (a decline, a rejection): stored, never retried.
    async fn fail(&self, attempt: &Attempt<'_>, permanent: &GatewayError) -> Handled {
        let receive_count = attempt.delivery.receive_count;
        let failure = StoredFailure { code: permanent.reason(), reason: permanent.to_string() };
        let settle = self.idempotency.fail_permanently(&attempt.lease, failure);
        match settle.instrument(tracing::info_span!(target: xray::TARGET, "settle")).await {
            Ok(Settlement::Recorded) => {
                if attempt.lease.resumed {
                    let note = format!("the payment failed for good later ({})", permanent.reason());
                    self.resolve_failure_records(attempt.message, &note).await;
                }
                Handled::FailedPermanently { code: permanent.reason() }
            }
            Ok(Settlement::NotOwner { current }) => {
                self.lost_lease(current.as_deref(), &permanent.reason(), receive_count)
            }
            Err(e) => self.retry("failure_not_recorded", &e.to_string(), receive_count, None),
        }
    }

    /// What a refused claim means for this delivery.
    async fn not_claimed(
        &self,
        outcome: Result<ClaimOutcome, impl ToString>,
        message: &PaymentMessage,
        delivery: &Delivery<'_>,
    ) -> Handled {
        let receive_count = delivery.receive_count;
        match outcome {
            Ok(ClaimOutcome::Claimed(_)) => unreachable!("claimed outcomes are handled by the caller"),
            Ok(ClaimOutcome::AlreadyCompleted { .. } | ClaimOutcome::AlreadyFailed(_)) => {
                if delivery.grant.is_some() {
                    // A redriven copy of a payment that settled meanwhile: its record is done.
                    self.resolve_failure_records(message, "the payment was settled when its redrive arrived").await;
                }
                Handled::Duplicate
            }
            Ok(ClaimOutcome::InProgressElsewhere { lease_until_ms }) => {
                // Another worker holds it: come back when its lease ends, not sooner.
                let wait_ms = u64::try_from(lease_until_ms.saturating_sub(self.clock.now_ms())).unwrap_or(0);
                let after = Duration::from_millis(wait_ms).max(Duration::from_secs(1)).min(self.backoff.cap());
                Handled::Deferred { reason: "in_progress_elsewhere".into(), after: round_up_secs(after) }
            }
            Ok(ClaimOutcome::PayloadMismatch) => {
                let detail = "this idempotency key was used before for a different payment";
                self.poison(delivery, Some(&hint_of(message)), "idempotency_key_reused", detail).await
            }
            Err(e) => self.retry("idempotency_store_unavailable", &e.to_string(), receive_count, None),
        }
    }

    async fn complete(&self, attempt: &Attempt<'_>, charge: Charge) -> Handled {
        let receive_count = attempt.delivery.receive_count;
        let result = ChargeResult { charge_id: charge.id.clone(), amount: charge.amount, currency: charge.currency };
        let stored = serde_json::to_value(&result).expect("a charge result serialises");
        let settle = self.idempotency.complete(&attempt.lease, &stored);
        match settle.instrument(tracing::info_span!(target: xray::TARGET, "settle")).await {
            Ok(Settlement::Recorded) => {
                if attempt.lease.resumed {
                    let note = format!("the payment succeeded later (charge {})", charge.id);
                    self.resolve_failure_records(attempt.message, &note).await;
                }
                Handled::Charged { charge_id: charge.id }
            }
            Ok(Settlement::NotOwner { current }) => self.lost_lease(current.as_deref(), &charge.id, receive_count),
            Err(e) => self.retry("completion_not_recorded", &e.to_string(), receive_count, None),
        }
    }

    /// A payment tried before may have been dead-lettered and recorded as not charged by an
    /// earlier copy; now that it is charged, its open failure records would tell operators a
    /// payment is dead that succeeded (found by the model checker). One query, on the retry path
    /// only.
    async fn resolve_failure_records(&self, message: &PaymentMessage, note: &str) {
        let (scope, key, now) = (&message.scope, &message.idempotency_key, self.clock.now_ms());
        if let Err(e) = resolve_open_records(&self.failures, scope, key, note, now).await {
            tracing::warn!(error = %e, "could not resolve the failure records of a settled payment");
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
        floor: Option<Duration>,
    ) -> Handled {
        let lease = &attempt.lease;
        let circuit = self.breaker.cached();
        // Only a failure that speaks of the provider's health (not a 409 for this one key) is
        // the provider's to blame.
        let provider_down = !matches!(kind, RetryableKind::InFlight | RetryableKind::CredentialsUnavailable)
            && (matches!(attempt.permit, Permit::Probe(_))
                || circuit.as_ref().is_some_and(|s| s.phase(self.clock.now_ms()) != Phase::Closed));
        // A 429 says the provider had no room, not that this payment failed, and an unreadable
        // key store sent nothing at all: neither costs an attempt, so a wave of them cannot
        // dead-letter anything (the payment's age still bounds it).
        let not_the_payments =
            matches!(kind, RetryableKind::RateLimited { .. } | RetryableKind::CredentialsUnavailable);
        let spent = attempt.delivery.spent(lease.attempt).saturating_sub(u32::from(provider_down || not_the_payments));
        let wait = match circuit.filter(|_| provider_down) {
            Some(state) => self.breaker_wait(state.open_until_ms, state.phase(self.clock.now_ms())),
            None => self.backoff_wait(attempt.delivery.spent(lease.attempt).max(1), floor),
        };
        let refund = if provider_down || not_the_payments { Refund::Attempt } else { Refund::No };
        match self.budget.verdict(spent, self.age_of(attempt.message, attempt.delivery), wait) {
            Verdict::Retry => {
                self.release(lease, reason, refund).await;
                tracing::info!(reason, detail, attempts = spent, retry_in_s = wait.as_secs(), "retryable failure");
                Handled::Retry { reason: reason.to_owned(), after: wait }
            }
            Verdict::GiveUp(why) => self.resolve_before_giving_up(attempt, why, reason, refund).await,
        }
    }

    /// Nothing is given up while it may have been charged: the last attempt may have reached the
    /// provider and charged (a timeout after sending), so ask it. Charged: complete with that
    /// charge (no new one). Not charged: dead-letter, saying so. Unknown: keep retrying.
    async fn resolve_before_giving_up(
        &self,
        attempt: &Attempt<'_>,
        why: GiveUpReason,
        last_error: &str,
        refund: Refund,
    ) -> Handled {
        let lookup = match self.paced(attempt.delivery).await {
            Ok(()) => {
                let asked = ChargeLookup::from(&attempt.request);
                let lookup = self.gateway.lookup(&asked);
                lookup.instrument(tracing::info_span!(target: xray::TARGET, "lookup")).await
            }
            Err(_) => Lookup::Unknown("no provider slot left in this invocation".into()),
        };
        attempt.metrics.count_with("OutcomeLookup", 1, &[("Result", lookup.label())]);
        if refund == Refund::LookupOnly {
            // The lookup was this delivery's only provider call.
            let health = matches!(lookup, Lookup::Charged(_) | Lookup::NotCharged).then_some(CallHealth::Healthy);
            self.breaker.record(&attempt.permit, health).await;
        }
        match lookup {
            Lookup::Charged(charge) => {
                tracing::warn!(charge_id = charge.id, "outcome resolved by lookup: charged; completing with it");
                self.complete(attempt, charge).await
            }
            Lookup::NotCharged => {
                self.release(&attempt.lease, last_error, refund).await;
                self.dead_letter(attempt.delivery, why.as_str(), last_error, "not_charged").await
            }
            Lookup::Unknown(detail) => {
                self.release(&attempt.lease, last_error, refund).await;
                tracing::warn!(detail, "outcome unknown: the provider may hold a charge; not giving up");
                self.retry("outcome_unknown", &detail, attempt.lease.attempt, None)
            }
            Lookup::KeyRefused(detail) => {
                self.release(&attempt.lease, last_error, refund).await;
                tracing::error!(detail, "the provider refused the API key on a lookup: not giving up");
                self.retry("lookup_key_refused", &detail, attempt.lease.attempt, None)
            }
        }
    }

    /// Waits for this instance's next provider slot, if it comes early enough for the call to
    /// finish within the invocation; otherwise says when a slot frees up.
    async fn paced(&self, delivery: &Delivery<'_>) -> Result<(), Duration> {
        match self.pacer.reserve(delivery.deadline_ms.saturating_sub(as_ms(self.call_time))) {
            Reservation::Go { wait } if wait.is_zero() => Ok(()),
            Reservation::Go { wait } => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Reservation::Full { free_in } => Err(free_in),
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

    /// Until `until_ms`, plus a jitter that spreads the crowd coming back for the probe.
    /// Never longer than the breaker's longest wait: an operator's forced open may be longer,
    /// and a forced close must not leave messages hidden until then.
    fn breaker_wait(&self, until_ms: i64, phase: Phase) -> Duration {
        let policy = &self.breaker.config().policy;
        let spread = match phase {
            Phase::HalfOpen => self.breaker.config().half_open_wait,
            Phase::Open | Phase::Closed => policy.open_base,
        };
        let until = Duration::from_millis(u64::try_from(until_ms.saturating_sub(self.clock.now_ms())).unwrap_or(0));
        let wait = until.min(policy.open_max) + self.jitter.spread(spread);
        round_up_secs(wait).max(Duration::from_secs(1)).min(SQS_MAX_VISIBILITY)
    }

    /// Sends the message to the dead-letter queue with its context, then it is deleted. If the
    /// send fails the message stays for a retry (the queue's own redrive is the last net).
    async fn dead_letter(&self, delivery: &Delivery<'_>, reason: &str, last_error: &str, resolution: &str) -> Handled {
        let letter = DeadLetter {
            body: delivery.body.to_owned(),
            source_message_id: delivery.sqs.message_id.clone().unwrap_or_default(),
            source_queue: delivery.sqs.event_source_arn.clone().unwrap_or_default(),
            reason: reason.to_owned(),
            resolution: resolution.to_owned(),
        };
        match self.dead_letters.send(&letter).await {
            Ok(()) => {
                tracing::warn!(reason, last_error, "payment given up: sent to the dead-letter queue");
                Handled::DeadLettered { reason: reason.to_owned(), last_error: last_error.to_owned() }
            }
            Err(e) => self.retry("dead_letter_not_sent", &e, delivery.receive_count, None),
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

    /// The jittered backoff for try `attempt`, at least `floor` (a `Retry-After`, a schema
    /// version's wait), at most the backoff's cap.
    fn backoff_wait(&self, attempt: u32, floor: Option<Duration>) -> Duration {
        let drawn = self.jitter.delay(&self.backoff, attempt);
        floor.map_or(drawn, |f| drawn.max(f)).min(self.backoff.cap())
    }

    fn retry(&self, reason: &str, detail: &str, receive_count: u32, floor: Option<Duration>) -> Handled {
        let after = self.backoff_wait(receive_count, floor);
        tracing::info!(reason, detail, retry_in_s = after.as_secs(), "retryable failure");
        Handled::Retry { reason: reason.to_owned(), after }
    }

    /// How old the payment is for its budget: since its acceptance, or since the operator's
    /// redrive when this delivery is one.
    fn age_of(&self, message: &PaymentMessage, delivery: &Delivery<'_>) -> Duration {
        let Ok(accepted) = humantime::parse_rfc3339(&message.created_at).map(epoch_ms) else {
            return Duration::ZERO;
        };
        let since = delivery.grant.map_or(accepted, |g| accepted.max(g.redriven_at_ms));
        Duration::from_millis(u64::try_from(self.clock.now_ms() - since).unwrap_or(0))
    }

    fn seconds_since(&self, at_ms: i64) -> f64 {
        (self.clock.now_ms() - at_ms).max(0) as f64 / 1000.0
    }

    /// A message that does not parse: when its key can still be read, fail its payment record
    /// (the status then shows FAILED with the reason). Never retried, unless recording fails.
    async fn invalid(&self, error: &EnvelopeError, delivery: &Delivery<'_>) -> Handled {
        let hint = KeyHint::find(delivery.body);
        if let Some(hint) = &hint {
            let key = process_key(&hint.scope, &hint.idempotency_key);
            let hash = PayloadHash::of_bytes(delivery.body.as_bytes());
            let failed = match self.idempotency.claim(&key, &hash, delivery.deadline_ms).await {
                Ok(ClaimOutcome::Claimed(lease)) => {
                    let failure = StoredFailure { code: error.code().into(), reason: error.to_string() };
                    self.idempotency.fail_permanently(&lease, failure).await.map(|_| ()).map_err(|e| e.to_string())
                }
                // A valid payment owns this key, or it is settled: leave its record alone.
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = failed {
                return self.retry("failure_not_recorded", &e, delivery.receive_count, None);
            }
        }
        self.poison(delivery, hint.as_ref(), error.code(), &error.to_string()).await
    }

    /// A message of a schema version this code does not read: during a rolling deploy the newer
    /// processor is moments away, so it waits (at least a minute per try) for up to
    /// [`VERSION_WAIT_RECEIVES`] deliveries; then it goes to the DLQ as `unsupported_schema_version`,
    /// redrivable once the deploy is done. Its payment is never marked FAILED.
    async fn unsupported_version(&self, error: &EnvelopeError, delivery: &Delivery<'_>) -> Handled {
        let detail = error.to_string();
        if delivery.receive_count < VERSION_WAIT_RECEIVES {
            return self.retry(error.code(), &detail, delivery.receive_count, Some(Duration::from_secs(60)));
        }
        // The code, not the detail, is the metric's dimension: one value, whatever the version.
        self.dead_letter(delivery, error.code(), error.code(), "not_tried").await
    }

    /// A message that is not a valid payment, or reuses a key for another one: its failure
    /// record is written, for operators, and it is never retried — unless the write fails, so
    /// that nothing is lost.
    async fn poison(&self, delivery: &Delivery<'_>, hint: Option<&KeyHint>, code: &str, detail: &str) -> Handled {
        let now = self.clock.now_ms();
        let record = FailureRecord {
            last_attempt_at_ms: Some(now),
            last_error: Some(stored_error(detail)),
            ..FailureRecord::open(FailureKind::Poison, delivery.failed(hint), code.to_owned(), now)
        };
        match self.failures.record(&record).await {
            Ok(_) => Handled::Poison { code: code.to_owned(), detail: detail.to_owned() },
            Err(e) => self.retry("failure_not_recorded", &e.to_string(), delivery.receive_count, None),
        }
    }
}

/// The payment a valid message names, as a failure record keys it.
fn hint_of(message: &PaymentMessage) -> KeyHint {
    KeyHint { scope: message.scope.clone(), idempotency_key: message.idempotency_key.clone() }
}

/// The charge for `message`, under the provider key derived from its scope and key.
fn charge_request(message: &PaymentMessage) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: provider_idempotency_key(&message.scope, &message.idempotency_key),
        amount: message.payment.amount,
        currency: message.payment.currency,
        payment_method: message.payment.payment_method.clone(),
        merchant_reference: message.payment.merchant_reference.clone(),
        metadata: message.payment.metadata.clone(),
    }
}

/// What a provider answer says about the provider's health: any answer about the payment
/// (a charge, a decline, a rejection) means it is up; 5xx, 429, timeouts, connection errors and
/// unreadable answers mean it may be down; a 409 for one key in flight, or a call never sent for
/// want of the key, says nothing.
pub fn provider_health(charged: &Result<Charge, GatewayError>) -> Option<CallHealth> {
    match charged {
        Ok(_) | Err(GatewayError::Declined { .. } | GatewayError::Rejected { .. }) => Some(CallHealth::Healthy),
        Err(GatewayError::Retryable {
            kind: RetryableKind::InFlight | RetryableKind::CredentialsUnavailable, ..
        }) => None,
        Err(GatewayError::Retryable { .. }) => Some(CallHealth::Unhealthy),
    }
}

fn count_transition(metrics: &Metrics, transition: Transition) {
    metrics.count_with("CircuitTransition", 1, &[("To", transition.to.as_str())]);
    tracing::warn!(from = transition.from.as_str(), to = transition.to.as_str(), "provider circuit changed");
}

fn as_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn round_up_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_millis().div_ceil(1000) as u64)
}

/// What a batch came to: the response for Lambda, and each record's fate.
pub type BatchSummary = BatchReport<Handled>;

impl<A: Adapters> RecordHandler for Processor<A> {
    type Fate = Handled;

    /// Handles one record inside a span naming it, so that every line logged meanwhile (a
    /// warning deep in a retry included) carries the payment's identity at the top level; then
    /// counts and logs its fate.
    async fn handle_record(&self, sqs: &SqsMessage, invocation: &Invocation<'_>) -> Handled {
        let started = Instant::now();
        let delivery = Delivery::of(sqs, invocation);
        let parsed = PaymentMessage::parse(delivery.body);
        let message = parsed.as_ref().ok();
        let span = tracing::info_span!(
            "record",
            idempotency_key = message.map_or("", |m| m.idempotency_key.as_str()),
            scope = message.map_or("", |m| m.scope.as_str()),
            correlation_id = message.map_or("", |m| m.correlation_id.as_str()),
            message_id = sqs.message_id.as_deref().unwrap_or(""),
            receive_count = delivery.receive_count,
        );
        async {
            let handled = self.decide(&delivery, &parsed, invocation.metrics()).await;
            let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            self.record_metrics(invocation.metrics(), &handled, elapsed_ms, message);
            tracing::info!(
                outcome = handled.label(),
                reason = handled.reason(),
                duration_ms = elapsed_ms,
                "record processed"
            );
            handled
        }
        .instrument(span)
        .await
    }
}

impl<A: Adapters> Processor<A> {
    fn record_metrics(&self, m: &Metrics, handled: &Handled, elapsed_ms: f64, message: Option<&PaymentMessage>) {
        m.observe("ProcessingLatency", Unit::Milliseconds, elapsed_ms);
        match handled {
            Handled::Charged { .. } => {
                m.count("Processed", 1);
                if let Some(accepted) = message.and_then(|msg| humantime::parse_rfc3339(&msg.created_at).ok()) {
                    let age_ms = (self.clock.now_ms() - epoch_ms(accepted)).max(0);
                    m.observe("PaymentLatency", Unit::Milliseconds, age_ms as f64);
                }
            }
            Handled::Duplicate => m.count("DuplicateSuppressed", 1),
            Handled::Deferred { reason, .. } => m.count_with("Deferred", 1, &[("Reason", reason)]),
            Handled::Retry { reason, .. } => {
                m.count("Retried", 1);
                m.count_with("Failure", 1, &[("Reason", reason)]);
            }
            Handled::DeadLettered { reason, last_error } => {
                m.count("GivenUp", 1);
                m.count_with("GivenUp", 1, &[("Reason", reason)]);
                m.count_with("Failure", 1, &[("Reason", last_error)]);
            }
            Handled::FailedPermanently { code } => {
                m.count("FailedPermanently", 1);
                if code == PROVIDER_UNAUTHORIZED {
                    // Every payment fails this way until the key is fixed: the alarm's metric.
                    m.count("ProviderUnauthorized", 1);
                }
                m.count_with("Failure", 1, &[("Reason", code)]);
            }
            Handled::Poison { code, .. } => {
                m.count("Poison", 1);
                m.count_with("Failure", 1, &[("Reason", code)]);
            }
        }
    }
}
