//! The circuit breaker's rules as pure functions over the stored state and the time.
//!
//! One breaker item per provider is shared by every processor instance. Every change is computed
//! here from the state as read, and the store writes it only if nobody changed the item since
//! (a version check), so these functions are the whole protocol: the in-memory store applies
//! them under a lock, the DynamoDB store under a condition expression, and a LocalStack test
//! checks that N instances racing for the half-open probe get exactly one prober.
//!
//! ```text
//!            failures ≥ threshold within the window
//!   CLOSED ─────────────────────────────────────────▶ OPEN(until)
//!     ▲                                                 │ now ≥ until: one instance leases the probe
//!     │ K probes succeeded          F probes failed:    ▼
//!     └──────────────────────────── HALF-OPEN ──────▶ OPEN(until = now + longer wait)
//! ```
//! Half-open is not stored: it is OPEN whose wait is over. Calls that were already in flight when
//! the breaker opened report into an open breaker and change nothing; only probes decide.

use std::time::Duration;

/// The breaker's defaults and limits, validated at cold start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Provider failures (5xx, 429, timeouts, connection errors) that open the breaker when they
    /// come within `failure_window` with no success in between.
    pub failure_threshold: u32,
    /// Failures older than this no longer count.
    pub failure_window: Duration,
    /// The first wait before probing; doubles with every failed probe.
    pub open_base: Duration,
    /// The longest wait before probing.
    pub open_max: Duration,
    /// Successful probes that close the breaker.
    pub close_after: u32,
    /// Failed probes that open it again before `close_after` successes. More than one, so that
    /// a provider back to its usual few errors is not held open for another, longer wait by one
    /// unlucky probe (Resilience4j likewise judges half-open by a rate over several calls).
    pub reopen_after: u32,
    /// How long one probe may take before another instance may probe instead (the provider
    /// timeout plus a margin).
    pub probe_lease: Duration,
}

impl Default for BreakerPolicy {
    /// 5 failures within 30 s open; probe after 30 s, then 1, 2, 4, 5 min; 3 successful probes
    /// close, 2 failed ones open again.
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            failure_window: Duration::from_secs(30),
            open_base: Duration::from_secs(30),
            open_max: Duration::from_secs(300),
            close_after: 3,
            reopen_after: 2,
            probe_lease: Duration::from_secs(12),
        }
    }
}

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker policy: {0}")]
pub struct PolicyError(pub String);

impl BreakerPolicy {
    /// Checks the limits that keep the breaker meaningful.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.failure_threshold == 0 || self.close_after == 0 || self.reopen_after == 0 {
            return Err(PolicyError(
                "the failure threshold and the probes that close or reopen must be at least 1".into(),
            ));
        }
        if self.failure_window.is_zero() || self.open_base.is_zero() || self.probe_lease.is_zero() {
            return Err(PolicyError("the failure window, the open wait and the probe lease must be positive".into()));
        }
        if self.open_max < self.open_base {
            return Err(PolicyError("the longest open wait must be at least the first".into()));
        }
        Ok(())
    }

    /// The wait before the next probe after the breaker opened for the `opened`-th time in a row
    /// (1 for the first): `open_base · 2^(opened−1)`, at most `open_max`.
    pub fn open_wait(&self, opened: u32) -> Duration {
        let doublings = opened.saturating_sub(1).min(31);
        self.open_base.saturating_mul(1u32 << doublings).min(self.open_max)
    }
}

/// Whether the breaker lets calls through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Circuit {
    /// Calls go through; failures are counted.
    Closed,
    /// No calls until `until`; then one probe at a time.
    Open,
}

impl Circuit {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "CLOSED",
            Self::Open => "OPEN",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "CLOSED" => Some(Self::Closed),
            "OPEN" => Some(Self::Open),
            _ => None,
        }
    }
}

/// What an observer sees at a given time (half-open is derived, never stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Calls go through.
    Closed,
    /// Waiting before the next probe.
    Open,
    /// The wait is over: one probe at a time.
    HalfOpen,
}

impl Phase {
    /// A lower-case name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// The breaker item as stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BreakerState {
    /// Closed or open.
    pub circuit: Circuit,
    /// Failures counted since `window_start_ms` (closed only).
    pub failures: u32,
    /// When the current count of failures began (epoch ms).
    pub window_start_ms: i64,
    /// Open: no calls before this (epoch ms).
    pub open_until_ms: i64,
    /// Open: when this outage began (kept across re-opens), for the "open too long" alarm.
    pub opened_at_ms: i64,
    /// Times opened in a row without closing (sizes the next wait).
    pub opened: u32,
    /// Successful probes since the breaker last opened.
    pub probe_successes: u32,
    /// Failed probes since the breaker last opened.
    pub probe_failures: u32,
    /// The instance holding the probe, if any.
    pub probe_owner: Option<String>,
    /// End of that probe's lease (epoch ms).
    pub probe_until_ms: i64,
    /// Bumped by every write: a write is accepted only over the version it was computed from.
    pub version: u64,
}

impl Default for BreakerState {
    /// A breaker never written: closed, nothing counted.
    fn default() -> Self {
        Self {
            circuit: Circuit::Closed,
            failures: 0,
            window_start_ms: 0,
            open_until_ms: 0,
            opened_at_ms: 0,
            opened: 0,
            probe_successes: 0,
            probe_failures: 0,
            probe_owner: None,
            probe_until_ms: 0,
            version: 0,
        }
    }
}

impl BreakerState {
    /// What an observer sees at `now_ms`.
    pub fn phase(&self, now_ms: i64) -> Phase {
        match self.circuit {
            Circuit::Closed => Phase::Closed,
            Circuit::Open if now_ms < self.open_until_ms => Phase::Open,
            Circuit::Open => Phase::HalfOpen,
        }
    }

    /// Whether another instance holds a live probe lease at `now_ms`.
    fn probe_is_held(&self, now_ms: i64) -> bool {
        self.probe_owner.is_some() && now_ms < self.probe_until_ms
    }

    fn next_version(&self) -> Self {
        Self { version: self.version + 1, ..self.clone() }
    }
}

/// What a caller may do before calling the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call.
    Call,
    /// Half-open and nobody probes: try to lease the probe ([`lease_probe`]), then call.
    TryProbe,
    /// Do not call before `until_ms` (epoch ms).
    Wait {
        /// When asking again makes sense.
        until_ms: i64,
    },
}

/// The admission rule. `half_open_wait` is how long a caller that lost the probe race waits
/// before asking again (the probe usually answers well before its lease ends).
pub fn admit(state: &BreakerState, now_ms: i64, half_open_wait: Duration) -> Admission {
    match state.phase(now_ms) {
        Phase::Closed => Admission::Call,
        Phase::Open => Admission::Wait { until_ms: state.open_until_ms },
        Phase::HalfOpen if state.probe_is_held(now_ms) => {
            Admission::Wait { until_ms: state.probe_until_ms.min(now_ms.saturating_add(ms(half_open_wait))) }
        }
        Phase::HalfOpen => Admission::TryProbe,
    }
}

/// The state after `owner` leases the probe at `now_ms`, or `None` when it may not (closed,
/// still waiting, or another live probe).
pub fn lease_probe(state: &BreakerState, owner: &str, now_ms: i64, policy: &BreakerPolicy) -> Option<BreakerState> {
    if state.phase(now_ms) != Phase::HalfOpen || state.probe_is_held(now_ms) {
        return None;
    }
    let mut next = state.next_version();
    next.probe_owner = Some(owner.to_owned());
    next.probe_until_ms = now_ms.saturating_add(ms(policy.probe_lease));
    Some(next)
}

/// How a provider call went, as far as the provider's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallHealth {
    /// The provider answered (a charge, a decline, a rejection): it is up.
    Healthy,
    /// 5xx, 429, a timeout, a connection error, an unreadable answer: it may be down.
    Unhealthy,
}

/// The state after a call ended with `health`; `probe` names the caller's probe lease when the
/// call was a probe. `None` means nothing to write (the common case: a success while closed and
/// clean, or any report into an open breaker from a call that was not its probe).
pub fn record_call(
    state: &BreakerState,
    health: CallHealth,
    probe: Option<&str>,
    now_ms: i64,
    policy: &BreakerPolicy,
) -> Option<BreakerState> {
    let is_probe = probe.is_some() && state.circuit == Circuit::Open && state.probe_owner.as_deref() == probe;
    match (state.circuit, health) {
        (Circuit::Open, _) if !is_probe => None,
        (Circuit::Open, CallHealth::Healthy) if state.probe_successes + 1 >= policy.close_after => {
            Some(BreakerState { version: state.version + 1, ..BreakerState::default() })
        }
        (Circuit::Open, CallHealth::Healthy) => {
            Some(BreakerState { probe_successes: state.probe_successes + 1, ..probe_freed(state) })
        }
        (Circuit::Open, CallHealth::Unhealthy) if state.probe_failures + 1 >= policy.reopen_after => {
            Some(opened(state, now_ms, policy))
        }
        (Circuit::Open, CallHealth::Unhealthy) => {
            Some(BreakerState { probe_failures: state.probe_failures + 1, ..probe_freed(state) })
        }
        (Circuit::Closed, CallHealth::Healthy) if state.failures == 0 => None,
        (Circuit::Closed, CallHealth::Healthy) => {
            Some(BreakerState { version: state.version + 1, ..BreakerState::default() })
        }
        (Circuit::Closed, CallHealth::Unhealthy) => {
            let window_over = now_ms.saturating_sub(state.window_start_ms) > ms(policy.failure_window);
            let (failures, window_start_ms) = if state.failures == 0 || window_over {
                (1, now_ms)
            } else {
                (state.failures + 1, state.window_start_ms)
            };
            if failures >= policy.failure_threshold {
                return Some(opened(state, now_ms, policy));
            }
            Some(BreakerState { failures, window_start_ms, ..state.next_version() })
        }
    }
}

/// The state after `owner` gives its probe up without calling (the payment turned out to be a
/// duplicate, or the claim failed), so another instance may probe at once.
pub fn return_probe(state: &BreakerState, owner: &str) -> Option<BreakerState> {
    (state.probe_owner.as_deref() == Some(owner)).then(|| probe_freed(state))
}

/// The next version of `state` with no probe lease held.
fn probe_freed(state: &BreakerState) -> BreakerState {
    BreakerState { probe_owner: None, probe_until_ms: 0, ..state.next_version() }
}

/// The state an operator forces: open until `until_ms`, or closed.
pub fn forced(state: &BreakerState, circuit: Circuit, until_ms: i64, now_ms: i64) -> BreakerState {
    match circuit {
        Circuit::Closed => BreakerState { version: state.version + 1, ..BreakerState::default() },
        Circuit::Open => BreakerState {
            circuit: Circuit::Open,
            open_until_ms: until_ms,
            opened_at_ms: if state.circuit == Circuit::Open { state.opened_at_ms } else { now_ms },
            opened: state.opened.max(1),
            ..BreakerState { version: state.version + 1, ..BreakerState::default() }
        },
    }
}

/// Open (again) from `state` at `now_ms`: the wait grows with each re-open in a row.
fn opened(state: &BreakerState, now_ms: i64, policy: &BreakerPolicy) -> BreakerState {
    let opened = if state.circuit == Circuit::Open { state.opened.saturating_add(1) } else { 1 };
    BreakerState {
        circuit: Circuit::Open,
        failures: 0,
        window_start_ms: 0,
        open_until_ms: now_ms.saturating_add(ms(policy.open_wait(opened))),
        opened_at_ms: if state.circuit == Circuit::Open { state.opened_at_ms } else { now_ms },
        opened,
        probe_successes: 0,
        probe_failures: 0,
        probe_owner: None,
        probe_until_ms: 0,
        version: state.version + 1,
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WAIT: Duration = Duration::from_secs(2);

    fn policy() -> BreakerPolicy {
        BreakerPolicy::default()
    }

    fn fail(state: &BreakerState, now_ms: i64) -> BreakerState {
        record_call(state, CallHealth::Unhealthy, None, now_ms, &policy()).unwrap_or_else(|| state.clone())
    }

    fn open_at(now_ms: i64) -> BreakerState {
        (0..5).fold(BreakerState::default(), |s, i| fail(&s, now_ms + i))
    }

    #[test]
    fn the_threshold_of_failures_within_the_window_opens() {
        let mut s = BreakerState::default();
        for i in 0..4 {
            s = fail(&s, 1_000 + i);
            assert_eq!(s.phase(1_000 + i), Phase::Closed);
        }
        s = fail(&s, 1_010);
        assert_eq!(s.phase(1_010), Phase::Open);
        assert_eq!(s.open_until_ms, 1_010 + 30_000);
        assert_eq!(s.opened_at_ms, 1_010);
        assert_eq!(admit(&s, 1_011, WAIT), Admission::Wait { until_ms: 31_010 });
    }

    #[test]
    fn a_success_or_an_old_window_resets_the_count() {
        let s = fail(&fail(&BreakerState::default(), 0), 1);
        let reset = record_call(&s, CallHealth::Healthy, None, 2, &policy()).unwrap();
        assert_eq!(reset.failures, 0);
        assert!(
            record_call(&reset, CallHealth::Healthy, None, 3, &policy()).is_none(),
            "a clean success writes nothing"
        );
        let late = fail(&s, 31_000);
        assert_eq!((late.failures, late.window_start_ms), (1, 31_000));
    }

    #[test]
    fn declines_and_successes_never_open_and_cost_no_write_when_clean() {
        let s = BreakerState::default();
        for now in 0..100 {
            assert!(record_call(&s, CallHealth::Healthy, None, now, &policy()).is_none());
        }
    }

    #[test]
    fn exactly_one_probe_at_a_time_and_k_successes_close() {
        let s = open_at(0);
        let half_open_at = s.open_until_ms;
        assert_eq!(admit(&s, half_open_at - 1, WAIT), Admission::Wait { until_ms: half_open_at });
        assert_eq!(admit(&s, half_open_at, WAIT), Admission::TryProbe);
        assert!(lease_probe(&s, "a", half_open_at - 1, &policy()).is_none(), "no probe before the wait is over");
        let probing = lease_probe(&s, "a", half_open_at, &policy()).unwrap();
        assert!(lease_probe(&probing, "b", half_open_at + 1, &policy()).is_none(), "one prober");
        assert_eq!(admit(&probing, half_open_at + 1, WAIT), Admission::Wait { until_ms: half_open_at + 2_001 });
        // A call in flight from before the breaker opened changes nothing.
        assert!(record_call(&probing, CallHealth::Healthy, None, half_open_at + 2, &policy()).is_none());
        assert!(record_call(&probing, CallHealth::Healthy, Some("b"), half_open_at + 2, &policy()).is_none());
        let mut s = record_call(&probing, CallHealth::Healthy, Some("a"), half_open_at + 3, &policy()).unwrap();
        assert_eq!((s.phase(half_open_at + 3), s.probe_successes), (Phase::HalfOpen, 1));
        for (i, who) in ["b", "c"].iter().enumerate() {
            let now = half_open_at + 10 + i as i64;
            s = lease_probe(&s, who, now, &policy()).unwrap();
            s = record_call(&s, CallHealth::Healthy, Some(who), now, &policy()).unwrap();
        }
        assert_eq!(s.phase(half_open_at + 20), Phase::Closed);
        assert_eq!((s.failures, s.opened), (0, 0));
    }

    #[test]
    fn a_second_failed_probe_reopens_for_longer_keeping_the_outage_start() {
        let s = open_at(0);
        let t = s.open_until_ms;
        let probing = lease_probe(&s, "a", t, &policy()).unwrap();
        let tolerated = record_call(&probing, CallHealth::Unhealthy, Some("a"), t + 1, &policy()).unwrap();
        assert_eq!((tolerated.phase(t + 1), tolerated.probe_failures), (Phase::HalfOpen, 1), "one bad probe");
        let probing = lease_probe(&tolerated, "b", t + 2, &policy()).unwrap();
        let reopened = record_call(&probing, CallHealth::Unhealthy, Some("b"), t + 5, &policy()).unwrap();
        assert_eq!(reopened.open_until_ms, t + 5 + 60_000);
        assert_eq!((reopened.opened, reopened.opened_at_ms), (2, s.opened_at_ms));
        assert!(reopened.probe_owner.is_none());
    }

    #[test]
    fn a_probe_whose_lease_ran_out_may_be_taken_by_another() {
        let s = open_at(0);
        let t = s.open_until_ms;
        let probing = lease_probe(&s, "a", t, &policy()).unwrap();
        let later = t + 12_000;
        let taken = lease_probe(&probing, "b", later, &policy()).unwrap();
        assert!(record_call(&taken, CallHealth::Unhealthy, Some("a"), later + 1, &policy()).is_none(), "stale prober");
        assert!(record_call(&taken, CallHealth::Healthy, Some("a"), later + 1, &policy()).is_none(), "stale prober");
        assert_eq!(return_probe(&taken, "b").unwrap().probe_owner, None);
        assert!(return_probe(&taken, "a").is_none());
    }

    #[test]
    fn operators_can_force_either_way() {
        let open = forced(&BreakerState::default(), Circuit::Open, 99_000, 1_000);
        assert_eq!((open.phase(1_000), open.opened_at_ms), (Phase::Open, 1_000));
        let closed = forced(&open, Circuit::Closed, 0, 2_000);
        assert_eq!(closed.phase(2_000), Phase::Closed);
        assert!(closed.version > open.version);
    }

    #[test]
    fn policies_are_checked() {
        assert!(policy().validate().is_ok());
        assert!(BreakerPolicy { failure_threshold: 0, ..policy() }.validate().is_err());
        assert!(BreakerPolicy { open_max: Duration::from_secs(1), ..policy() }.validate().is_err());
        assert_eq!(policy().open_wait(1), Duration::from_secs(30));
        assert_eq!(policy().open_wait(3), Duration::from_secs(120));
        assert_eq!(policy().open_wait(40), Duration::from_secs(300));
    }

    #[derive(Debug, Clone)]
    enum Event {
        Call(CallHealth),
        Probe(u8, CallHealth),
        Tick(u32),
    }

    fn event() -> impl Strategy<Value = Event> {
        let health = prop_oneof![Just(CallHealth::Healthy), Just(CallHealth::Unhealthy)];
        prop_oneof![
            health.clone().prop_map(Event::Call),
            (0u8..3, health).prop_map(|(who, h)| Event::Probe(who, h)),
            (0u32..70_000).prop_map(Event::Tick),
        ]
    }

    proptest! {
        /// Whatever happens: versions only grow, a probe lease is only ever held while open, an
        /// open breaker never admits a plain call, the wait never exceeds the maximum, and at
        /// most one live prober exists.
        #[test]
        fn invariants_hold_under_any_sequence(events in proptest::collection::vec(event(), 1..200)) {
            let p = policy();
            let mut s = BreakerState::default();
            let mut now = 0i64;
            for e in events {
                let before = s.version;
                match e {
                    Event::Tick(ms) => now += i64::from(ms),
                    Event::Call(h) => {
                        if admit(&s, now, WAIT) == Admission::Call
                            && let Some(next) = record_call(&s, h, None, now, &p)
                        {
                            s = next;
                        }
                    }
                    Event::Probe(who, h) => {
                        let who = who.to_string();
                        if admit(&s, now, WAIT) == Admission::TryProbe {
                            let leased = lease_probe(&s, &who, now, &p);
                            prop_assert!(leased.is_some(), "TryProbe must be leasable");
                            s = leased.unwrap();
                            prop_assert!(lease_probe(&s, "other", now, &p).is_none());
                            if let Some(next) = record_call(&s, h, Some(&who), now, &p) { s = next; }
                        }
                    }
                }
                prop_assert!(s.version >= before);
                prop_assert!(s.probe_owner.is_none() || s.circuit == Circuit::Open);
                if s.circuit == Circuit::Open {
                    prop_assert_ne!(admit(&s, now, WAIT), Admission::Call);
                    prop_assert!(s.open_until_ms - now <= p.open_max.as_millis() as i64);
                    prop_assert!(s.opened >= 1);
                } else {
                    prop_assert!(s.failures < p.failure_threshold);
                }
            }
        }

        /// Only unhealthy calls open a breaker: any run of healthy answers keeps it closed.
        #[test]
        fn healthy_answers_never_open(gaps in proptest::collection::vec(0i64..100_000, 1..100)) {
            let mut s = BreakerState::default();
            let mut now = 0;
            for gap in gaps {
                now += gap;
                if let Some(next) = record_call(&s, CallHealth::Healthy, None, now, &policy()) { s = next; }
                prop_assert_eq!(s.phase(now), Phase::Closed);
            }
        }
    }
}
