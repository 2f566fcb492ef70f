//! The provider as the decision path calls it: through the fleet's circuit breaker and this
//! instance's share of the provider's rate, each call in its own trace segment, and each answer
//! reported to the breaker and counted. Written once here, so that the handler reads as the rule.

use std::sync::Arc;
use std::time::Duration;

use fleet_breaker::{Admitted, BreakerStore, CallHealth, CircuitBreaker, Permit, Phase, Transition};
use lambda_observability::{Metrics, Unit, xray};
use lambda_support::clock::Clock;
use payments_core::pacing::{Pacer, Reservation};
use payments_core::payment::{
    Charge, ChargeLookup, ChargeRequest, GatewayError, Lookup, PaymentGateway, RetryableKind,
};
use tracing::Instrument;

/// The gateway behind the breaker and the pacer.
pub(crate) struct Provider<G, B> {
    gateway: G,
    breaker: CircuitBreaker<B>,
    pacer: Pacer,
    /// The longest a call may take: a call starts only if it can finish before the deadline.
    call_time: Duration,
    clock: Arc<dyn Clock>,
}

/// Whom a retryable failure is blamed on.
pub(crate) enum Blame {
    /// The payment: the attempt counts against its budget.
    Payment,
    /// The provider (a failed probe, or a failure while the circuit is not closed): the attempt
    /// is given back, and the wait follows the breaker's `circuit` (open until, phase) when this
    /// instance has read it.
    Provider { circuit: Option<(i64, Phase)> },
}

impl<G: PaymentGateway, B: BreakerStore> Provider<G, B> {
    pub(crate) fn new(
        gateway: G,
        breaker: CircuitBreaker<B>,
        pacer: Pacer,
        call_time: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { gateway, breaker, pacer, call_time, clock }
    }

    pub(crate) fn gateway(&self) -> &G {
        &self.gateway
    }

    pub(crate) fn breaker(&self) -> &CircuitBreaker<B> {
        &self.breaker
    }

    /// The breaker's permit, or until when (and in which phase) calls wait; how long the circuit
    /// has been open is counted.
    pub(crate) async fn admit(&self, metrics: &Metrics) -> Result<Permit, (i64, Phase)> {
        match self.breaker.admit().await {
            Admitted::Go(permit) => Ok(permit),
            Admitted::Wait { until_ms, phase, opened_at_ms } => {
                let open_for_s = (self.clock.now_ms() - opened_at_ms).max(0) as f64 / 1000.0;
                metrics.observe("CircuitOpenFor", Unit::Seconds, open_for_s);
                Err((until_ms, phase))
            }
        }
    }

    /// Hands a permit back unused: no call was made after all (a probe's lease goes back at once).
    pub(crate) async fn unused(&self, permit: &Permit) {
        self.breaker.record(permit, None).await;
    }

    /// Charges, if a slot of the provider's rate comes early enough for the call to finish by
    /// `deadline_ms`; otherwise hands the permit back and says when a slot frees up.
    pub(crate) async fn charge(
        &self,
        permit: &Permit,
        request: &ChargeRequest,
        deadline_ms: i64,
        metrics: &Metrics,
    ) -> Result<Result<Charge, GatewayError>, Duration> {
        if let Err(free_in) = self.paced(deadline_ms).await {
            self.unused(permit).await;
            return Err(free_in);
        }
        let charged =
            self.gateway.charge(request).instrument(tracing::info_span!(target: xray::TARGET, "charge")).await;
        if matches!(permit, Permit::Probe(_)) {
            metrics.count("ProviderProbe", 1);
        }
        if let Some(transition) = self.breaker.record(permit, provider_health(&charged)).await {
            count_transition(metrics, transition);
        }
        Ok(charged)
    }

    /// Asks whether `request` charged. When the lookup is the delivery's `only_call`, its answer
    /// is the permit's report to the breaker.
    pub(crate) async fn lookup(
        &self,
        permit: &Permit,
        request: &ChargeRequest,
        deadline_ms: i64,
        metrics: &Metrics,
        only_call: bool,
    ) -> Lookup {
        let lookup = match self.paced(deadline_ms).await {
            Ok(()) => {
                let asked = ChargeLookup::from(request);
                self.gateway.lookup(&asked).instrument(tracing::info_span!(target: xray::TARGET, "lookup")).await
            }
            Err(_) => Lookup::Unknown("no provider slot left in this invocation".into()),
        };
        metrics.count_with("OutcomeLookup", 1, &[("Result", lookup.label())]);
        if only_call {
            let health = matches!(lookup, Lookup::Charged(_) | Lookup::NotCharged).then_some(CallHealth::Healthy);
            self.breaker.record(permit, health).await;
        }
        lookup
    }

    /// Whom a retryable failure of `kind` under `permit` is blamed on. Only a failure that speaks
    /// of the provider's health (not a 409 for one key, not a key never read) can be the
    /// provider's, and only when the breaker already doubts it: a probe, or a circuit not closed.
    pub(crate) fn blame(&self, permit: &Permit, kind: &RetryableKind) -> Blame {
        if matches!(kind, RetryableKind::InFlight | RetryableKind::CredentialsUnavailable) {
            return Blame::Payment;
        }
        let now_ms = self.clock.now_ms();
        let circuit = self.breaker.cached().map(|s| (s.open_until_ms, s.phase(now_ms)));
        let doubted = matches!(permit, Permit::Probe(_)) || circuit.is_some_and(|(_, phase)| phase != Phase::Closed);
        if doubted { Blame::Provider { circuit } } else { Blame::Payment }
    }

    /// Waits for this instance's next provider slot, if it comes early enough for the call to
    /// finish by `deadline_ms`; otherwise says when a slot frees up.
    async fn paced(&self, deadline_ms: i64) -> Result<(), Duration> {
        let call_ms = i64::try_from(self.call_time.as_millis()).unwrap_or(i64::MAX);
        match self.pacer.reserve(deadline_ms.saturating_sub(call_ms)) {
            Reservation::Go { wait } if wait.is_zero() => Ok(()),
            Reservation::Go { wait } => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Reservation::Full { free_in } => Err(free_in),
        }
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
