//! An exhaustive model of the idempotency protocol as the processor implements it, checked with
//! `stateright`: workers receive SQS messages, claim the payment's record, call the provider with
//! the payment's key, and complete, fail or release — while time passes, leases and TTLs expire,
//! SQS redelivers after the visibility timeout and dead-letters after maxReceiveCount, workers
//! crash at any step (a crashed worker's request may still reach the provider), and the provider
//! answers, fails, declines, or commits and then times out. The DLQ consumer asks the provider
//! before it records a dead payment: charged → it completes the payment's record with that
//! charge; a request still in flight → unknown, it waits; not charged → an open failure record.
//! In the completer's configuration a message may vanish, and the completer re-enqueues a
//! payment whose record is abandoned with no message left (a payment claimed before is past its
//! age limit by then, so its new message only asks the provider), or leaves it to the operator.
//!
//! The model does not restate the rules: every claim and settlement goes through
//! `lambda_idempotency::protocol` (`decide_claim`, `claimed_record`, `may_settle`,
//! `settled_record`) — the same functions the in-memory store applies and the DynamoDB
//! condition expressions mirror (checked against LocalStack by
//! `tests/integration/tests/protocol_conformance.rs`). The weakened [`Rules`] exist to show that
//! the checker finds the counterexample each guard prevents.
//!
//! Why stateright: it is the maintained model checker on crates.io that takes a model written in
//! Rust, so the model calls the production decision functions directly instead of a TLA+ or
//! Promela transcription that could drift.

use lambda_idempotency::protocol::{
    ClaimDecision, ClaimRequest, IdempotencyRecord, OwnerToken, RecordStatus, Recovery, Refusal, Settle, SettleRequest,
    StoredFailure, claimed_record, decide_claim, is_own_claim, is_own_settlement, may_settle, settled_record,
};
use lambda_idempotency::{IdempotencyKey, Operation, PayloadHash, RecordKey, Scope};
use stateright::{Model, Property};

/// The provider's behaviour towards idempotency keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Same key → the first answer again, never a second charge (Stripe).
    HonoursKeys,
    /// Every request that commits is a new charge: the worst case.
    IgnoresKeys,
}

/// Which version of the guards the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    /// The rules as built (`protocol.rs`).
    Real,
    /// Settling without the owner-token condition (only IN_PROGRESS is required).
    NoOwnerCondition,
    /// Claiming an IN_PROGRESS record without waiting for its lease to end.
    NoLeaseExpiryCheck,
    /// Complete, fail and release as unconditional writes, as Powertools does them.
    UnconditionalSettle,
    /// The DLQ consumer records every dead payment as dead without asking the provider.
    DeadLetterWithoutLookup,
    /// A worker whose store answer was lost takes every refusal of its retry for another's
    /// write, as the store did before it compared what it found with what it wrote.
    NoOwnWriteRecognition,
}

/// Time in ticks of one second. The state keeps every timer relative to "now" and saturates the
/// ones in the past (a lease over, a message visible), so the state space is finite without a
/// horizon: decisions only ever compare a timer with now, and every new timer is now + a constant.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A worker is killed this many ticks after it received its message (the Lambda timeout).
    pub function_timeout: u8,
    /// The queue's visibility timeout.
    pub visibility: u8,
    /// The lease cap (`IDEMPOTENCY_MAX_LEASE_SECONDS`).
    pub max_lease: u8,
    /// The provider call's timeout: a call ends by then (answer or timeout).
    pub provider_timeout: u8,
    /// `LEASE_MARGIN_MS`: a record starts only with provider timeout + margin left.
    pub margin: u8,
    /// Backoff after a retryable failure.
    pub backoff: u8,
    /// Record TTL.
    pub retention: u8,
}

impl Default for Timing {
    fn default() -> Self {
        // The lease cap is shorter than the invocation timeout (as when IDEMPOTENCY_MAX_LEASE_SECONDS
        // is below the Lambda timeout), so a worker can outlive its lease; it still exceeds the
        // provider timeout plus the margin, as the processor's cold-start check demands.
        Self {
            function_timeout: 4,
            visibility: 5,
            max_lease: 2,
            provider_timeout: 1,
            margin: 0,
            backoff: 1,
            retention: 12,
        }
    }
}

/// The model's parameters.
#[derive(Debug, Clone)]
pub struct ProtocolModel {
    /// Concurrent workers.
    pub workers: u8,
    /// Payments.
    pub keys: u8,
    /// How many of the payments have a second, identical message (an intake re-send after a
    /// crash, or SQS's at-least-once duplicate): what makes two workers meet on one key.
    pub duplicated: u8,
    /// Crashes allowed in a run.
    pub max_crashes: u8,
    /// Deliveries before the DLQ.
    pub max_receive: u8,
    /// The provider.
    pub provider: Provider,
    /// The guards.
    pub rules: Rules,
    /// Timing.
    pub timing: Timing,
    /// Whether the provider fails (503) and commits-then-times-out.
    pub faults: bool,
    /// Whether the provider declines.
    pub declines: bool,
    /// Messages that may vanish in a run (an intake that died before `SendMessage`, a purged
    /// queue, a message deleted by mistake): what the completer exists for.
    pub max_losses: u8,
    /// Times the completer may re-enqueue each payment in a run (0: no completer). The real one
    /// runs every minute without a bound; the model bounds it to stay finite.
    pub max_completions: u8,
    /// Store answers that may be lost in a run: a claim or settlement commits, and its answer
    /// never reaches the worker, whose SDK retries it and is refused by its own write. The worker
    /// then tells its own write from another's with `protocol::is_own_claim` and
    /// `is_own_settlement`, as the DynamoDB store does.
    pub max_lost_answers: u8,
}

impl ProtocolModel {
    /// The configuration of the issue: 3 workers, 2 keys, up to 2 crashes.
    pub fn standard(provider: Provider, rules: Rules) -> Self {
        Self {
            workers: 3,
            keys: 2,
            duplicated: 1,
            max_crashes: 2,
            max_receive: 2,
            provider,
            rules,
            timing: Timing::default(),
            faults: true,
            declines: true,
            max_losses: 0,
            max_completions: 0,
            max_lost_answers: 0,
        }
    }

    /// Lost store answers: 2 workers, 2 payments (one delivered twice), one crash, and up to two
    /// claims or settlements whose answer is lost after the write committed.
    pub fn with_lost_answers(provider: Provider, rules: Rules) -> Self {
        Self { workers: 2, max_crashes: 1, max_lost_answers: 2, ..Self::standard(provider, rules) }
    }

    /// The completer's configuration: 2 workers, 2 payments, one crash, one message lost at any
    /// point, and a completer that may re-enqueue once. (Duplicate deliveries are left to the
    /// standard configuration: a re-enqueued payment is already a second message.)
    pub fn with_completer(provider: Provider, rules: Rules) -> Self {
        Self {
            workers: 2,
            duplicated: 0,
            max_crashes: 1,
            max_losses: 1,
            max_completions: 1,
            ..Self::standard(provider, rules)
        }
    }
}

/// What a provider call came back with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Answer {
    /// Charged (the charge's number at the provider).
    Charged(u8),
    /// Declined: permanent.
    Declined,
    /// 5xx or timeout: retry later.
    Retryable,
}

/// A worker (one Lambda instance processing one record). Timers are relative to now.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Worker {
    /// Waiting for work.
    Idle,
    /// Claimed, and waiting on the provider.
    Calling {
        /// The message (index in `State::messages`).
        msg: u8,
        /// Ticks until killed.
        deadline: i8,
        /// Ticks until the call must have ended (answer or timeout).
        call_deadline: i8,
    },
    /// Has the provider's answer, about to settle.
    Answered {
        /// The message (index in `State::messages`).
        msg: u8,
        /// Ticks until killed.
        deadline: i8,
        /// The answer.
        answer: Answer,
    },
}

/// An SQS message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Message {
    /// The payment it carries.
    pub key: u8,
    /// ApproximateReceiveCount.
    pub receives: u8,
    /// Ticks until visible (0: visible).
    pub visible_in: i8,
    /// The worker holding the newest receipt handle (only it can delete or hide the message).
    pub holder: Option<u8>,
    /// Deleted by a worker.
    pub deleted: bool,
    /// Moved to the DLQ.
    pub dead: bool,
    /// The DLQ consumer wrote its failure record.
    pub failure_recorded: bool,
    /// ... closed, because the provider held the payment's charge (the record is completed).
    pub closed_charged: bool,
    /// Vanished without being processed to the end (see [`ProtocolModel::max_losses`]).
    pub lost: bool,
    /// Sent by the completer for a payment past its age limit: the processor only asks the
    /// provider, it never charges such a payment again.
    pub lookup_only: bool,
}

impl Message {
    /// A message just sent for payment `key`.
    fn sent(key: u8, lookup_only: bool) -> Self {
        Self {
            key,
            receives: 0,
            visible_in: 0,
            holder: None,
            deleted: false,
            dead: false,
            failure_recorded: false,
            closed_charged: false,
            lost: false,
            lookup_only,
        }
    }
}

/// The provider's memory of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ProviderKey {
    /// Charges made.
    pub charges: u8,
    /// The stored answer (honouring provider).
    pub stored: Option<Answer>,
    /// Requests being processed now (worker calls and orphans of crashed workers).
    pub in_flight: u8,
    /// History: two requests were in flight at once.
    pub overlapped: bool,
}

/// The whole system.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct State {
    /// The `process` record of each payment (times relative to now).
    pub records: Vec<Option<IdempotencyRecord>>,
    /// The messages: one per payment, plus the duplicates.
    pub messages: Vec<Message>,
    /// Per payment: its record passed its TTL (retention outlives processing, so only after the
    /// record was settled).
    pub expired: Vec<bool>,
    /// Workers; worker `w` claims with owner token `w`.
    pub workers: Vec<Worker>,
    /// Provider, per payment.
    pub provider: Vec<ProviderKey>,
    /// Requests of crashed workers still reaching the provider: (key, ticks left to be processed).
    pub orphans: Vec<(u8, i8)>,
    /// Crashes so far.
    pub crashes: u8,
    /// History: a worker changed a record it no longer owned (its claim had been taken over).
    pub stale_write: bool,
    /// History: a COMPLETED or FAILED record changed afterwards (other than by TTL).
    pub settled_changed: bool,
    /// Messages lost so far.
    pub losses: u8,
    /// Re-enqueues by the completer so far, per payment.
    pub completions: Vec<u8>,
    /// Store answers lost so far.
    pub lost_answers: u8,
    /// History: a worker whose answer was lost took another's claim, completion or failure for
    /// its own, or missed its own.
    pub misjudged: bool,
}

/// Everything that can happen.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// A second passes; workers at their deadline are killed.
    Tick,
    /// `worker` receives message `msg` and the batch runner starts it at once: claim, and on
    /// success call the provider (or SQS dead-letters it past maxReceiveCount). With `true`, the
    /// claim's answer is lost: the worker learns the outcome from its retry.
    Receive(u8, u8, bool),
    /// The provider answers the worker (`true`: it committed, then the client timed out).
    Finish(u8, Answer, bool),
    /// The worker settles its claim with the answer (`true`: the answer is lost, as above).
    Settle(u8, bool),
    /// The worker crashes.
    Crash(u8),
    /// The provider processes a crashed worker's request (committing it or not).
    ProviderProcessesOrphan(usize, bool),
    /// A settled record's TTL passes (it now counts as absent).
    Expire(u8),
    /// DynamoDB's TTL process deletes an expired record.
    TtlDelete(u8),
    /// The DLQ consumer records a dead message (by index).
    RecordDeadLetter(u8),
    /// A message vanishes (by index).
    Lose(u8),
    /// The completer handles payment `k`'s abandoned record: re-enqueues the payment, or, when a
    /// failure record exists, stops watching it.
    Complete(u8),
}

fn record_key(key: u8) -> RecordKey {
    RecordKey::new(
        Operation::new("process").expect("valid"),
        Scope::new("model").expect("valid"),
        IdempotencyKey::new(&format!("k{key}")).expect("valid"),
    )
}

fn payload() -> PayloadHash {
    PayloadHash::from_stored("payload".into())
}

fn token(worker: u8) -> OwnerToken {
    OwnerToken::from_stored(format!("w{worker}"))
}

/// The owner token of a claim whose worker crashed (held by no live worker).
const CRASHED: &str = "crashed";

/// The DLQ consumer's owner token when it completes a record (not a worker's).
const DLQ_CONSUMER: &str = "dlq";

/// "Now" for the protocol functions: timers are relative, so now is always 0.
const NOW_MS: i64 = 0;
/// A lease that ended (in ms, relative): every past lease end is the same to the protocol.
const PAST_MS: i64 = -1000;

impl ProtocolModel {
    fn decide(&self, stored: Option<&IdempotencyRecord>) -> ClaimDecision {
        match self.rules {
            Rules::NoLeaseExpiryCheck => match stored {
                Some(r) if r.status == RecordStatus::InProgress && !r.is_expired(NOW_MS) => ClaimDecision::TakeOver,
                other => decide_claim(other, &payload(), NOW_MS),
            },
            _ => decide_claim(stored, &payload(), NOW_MS),
        }
    }

    /// What a worker whose answer was lost concludes, given what the protocol's recognition says.
    fn recognises(&self, own: bool) -> bool {
        own && self.rules != Rules::NoOwnWriteRecognition
    }

    fn allowed(&self, stored: Option<&IdempotencyRecord>, worker: u8) -> bool {
        match self.rules {
            Rules::Real | Rules::NoLeaseExpiryCheck | Rules::DeadLetterWithoutLookup | Rules::NoOwnWriteRecognition => {
                may_settle(stored, &token(worker))
            }
            Rules::NoOwnerCondition => matches!(stored, Some(r) if r.status == RecordStatus::InProgress),
            Rules::UnconditionalSettle => stored.is_some(),
        }
    }

    /// A message is done when deleted with its payment settled (the record COMPLETED or FAILED,
    /// or past its TTL after that), or dead with a failure record. A lost message is done when
    /// its payment is settled or recorded dead by any other path.
    pub fn message_done(&self, state: &State, msg: usize) -> bool {
        let m = &state.messages[msg];
        let k = usize::from(m.key);
        let settled = matches!(&state.records[k], Some(r) if r.status != RecordStatus::InProgress);
        if m.lost {
            return settled || state.expired[k] || Self::recorded_dead(state, k);
        }
        (m.deleted && (settled || state.expired[k])) || (m.dead && m.failure_recorded)
    }

    /// Payment `k` has a failure record (an operator owns it).
    fn recorded_dead(state: &State, k: usize) -> bool {
        state.messages.iter().any(|m| usize::from(m.key) == k && m.dead && m.failure_recorded)
    }

    /// The completer's guard for payment `k`: its record abandoned (absent — the intake never
    /// enqueued — or IN_PROGRESS with the lease over and its recovery due) and no message of it
    /// left in the queue. The real completer knows the last by time (past the payment's age
    /// limit and an hour of quiet, no delivery can still carry it); a dead message whose failure
    /// record is still being written does not stop it, as it would not stop the real one.
    fn abandoned(&self, state: &State, k: usize) -> bool {
        let record = &state.records[k];
        let due = match record {
            None => !state.expired[k],
            Some(r) => r.is_due_for_recovery(NOW_MS),
        };
        due && state.messages.iter().filter(|m| usize::from(m.key) == k).all(|m| m.deleted || m.dead)
    }

    fn all_done(&self, state: &State) -> bool {
        (0..state.messages.len()).all(|i| self.message_done(state, i))
    }

    /// The provider's side of one request that commits.
    fn commit(&self, provider: &mut ProviderKey, decline: bool) -> Answer {
        if self.provider == Provider::HonoursKeys
            && let Some(stored) = provider.stored
        {
            return stored;
        }
        let answer = if decline {
            Answer::Declined
        } else {
            // Saturating: the properties only ask whether a key was charged more than once.
            provider.charges = (provider.charges + 1).min(2);
            Answer::Charged(provider.charges)
        };
        if self.provider == Provider::HonoursKeys {
            provider.stored = Some(answer);
        }
        answer
    }

    fn delete(state: &mut State, worker: u8, msg: u8) {
        let m = &mut state.messages[usize::from(msg)];
        if m.holder == Some(worker) && !m.dead {
            m.deleted = true;
        }
    }

    fn hide(state: &mut State, worker: u8, msg: u8, for_ticks: i8) {
        let m = &mut state.messages[usize::from(msg)];
        if m.holder == Some(worker) {
            m.visible_in = for_ticks;
        }
    }

    fn kill(state: &mut State, w: usize) {
        if let Worker::Calling { msg, call_deadline, .. } = state.workers[w] {
            // The request is on the wire: the provider may still process it, within the call's
            // timeout.
            let key = state.messages[usize::from(msg)].key;
            state.orphans.push((key, call_deadline));
            state.orphans.sort_unstable();
        }
        state.workers[w] = Worker::Idle;
        // Owner tokens are random per claim: the instance that replaces a crashed one never holds
        // its tokens. Tokens here are per worker slot, so the crashed claims' tokens are renamed
        // to one no worker holds (tokens are only ever compared for equality).
        let (crashed, nobody) = (token(w as u8), OwnerToken::from_stored(CRASHED.into()));
        for record in state.records.iter_mut().flatten() {
            if record.owner.as_ref() == Some(&crashed) {
                record.owner = Some(nobody.clone());
            }
        }
    }

    /// Whether waiting changes anything: some timer still runs.
    fn time_matters(state: &State) -> bool {
        let worker_timer = state.workers.iter().any(|w| !matches!(w, Worker::Idle));
        let message_timer = state.messages.iter().any(|m| !m.deleted && !m.dead && m.visible_in > 0);
        let lease_timer = state.records.iter().flatten().any(|r| r.lease_until_ms > PAST_MS);
        worker_timer || message_timer || lease_timer
    }

    /// The DLQ consumer: ask the provider; a charge found completes the payment's record (by the
    /// same claim rule as any worker: not while another holds a live lease — then `None`, it
    /// retries later) and closes the failure record; none found records the payment as dead.
    fn record_dead_letter(&self, mut s: State, i: u8) -> Option<State> {
        let k = usize::from(s.messages[usize::from(i)].key);
        let charges = s.provider[k].charges;
        if self.rules != Rules::DeadLetterWithoutLookup && charges >= 1 {
            let stored = s.records[k].clone();
            match self.decide(stored.as_ref()) {
                decision @ (ClaimDecision::Create | ClaimDecision::TakeOver) => {
                    let request = ClaimRequest {
                        key: record_key(k as u8),
                        payload_hash: payload(),
                        owner: OwnerToken::from_stored(DLQ_CONSUMER.into()),
                        now_ms: NOW_MS,
                        lease_until_ms: 1000,
                        expires_at_s: i64::from(self.timing.retention),
                        recovery: None,
                    };
                    let claimed = claimed_record(stored.as_ref(), decision, &request);
                    let complete = Settle::Complete { result: format!("ch{charges}") };
                    let mut next = settled_record(&claimed, &complete, NOW_MS, i64::from(self.timing.retention));
                    next.owner = None;
                    next.lease_until_ms = PAST_MS;
                    abstract_history(&mut next);
                    s.records[k] = Some(next);
                }
                ClaimDecision::Refuse(Refusal::InProgress { .. }) => return None,
                ClaimDecision::Refuse(_) => {}
            }
            // This record, and any earlier dead copy's recorded before the charge, are closed.
            for m in s.messages.iter_mut().filter(|m| usize::from(m.key) == k && m.failure_recorded) {
                m.closed_charged = true;
            }
            s.messages[usize::from(i)].closed_charged = true;
        }
        s.messages[usize::from(i)].failure_recorded = true;
        Some(s)
    }

    /// Whether payment `k` shows FAILED or DEAD_LETTERED (an open failure record and no
    /// completed record), as the status query derives it. Past the record's TTL the payment is
    /// unknown (404): its intake record, written first with the same retention, is gone too.
    fn reported_failed(state: &State, k: usize) -> bool {
        if state.expired[k] {
            return false;
        }
        let status = state.records[k].as_ref().map(|r| r.status);
        let dead =
            state.messages.iter().any(|m| usize::from(m.key) == k && m.dead && m.failure_recorded && !m.closed_charged);
        status == Some(RecordStatus::Failed) || (dead && status != Some(RecordStatus::Completed))
    }

    /// A delivery of a payment past its age limit, by the claim `record` of worker `w` (as one
    /// step: a crash within it is a crash after the claim, covered elsewhere): ask the provider.
    /// Charged: complete with that charge. A request still in flight: unknown, release and retry.
    /// Not charged: release and dead-letter (the DLQ consumer records it).
    fn look_up_only(&self, mut s: State, w: u8, msg: u8, record: IdempotencyRecord) -> State {
        let k = usize::from(s.messages[usize::from(msg)].key);
        let (charges, in_flight) = (s.provider[k].charges, s.provider[k].in_flight);
        let settle = if charges >= 1 {
            Settle::Complete { result: format!("ch{charges}") }
        } else {
            Settle::Release { reason: "looked up".into(), refund: true }
        };
        let mut next = settled_record(&record, &settle, NOW_MS, i64::from(self.timing.retention));
        abstract_history(&mut next);
        s.records[k] = Some(next);
        if charges >= 1 {
            // As the processor does on completion: the payment's open failure records close.
            for m in s.messages.iter_mut().filter(|m| usize::from(m.key) == k && m.failure_recorded) {
                m.closed_charged = true;
            }
            Self::delete(&mut s, w, msg);
        } else if in_flight > 0 {
            Self::hide(&mut s, w, msg, self.timing.backoff as i8);
        } else {
            let m = &mut s.messages[usize::from(msg)];
            (m.dead, m.holder) = (true, None);
        }
        s
    }

    fn start_call(state: &mut State, key: u8) {
        let p = &mut state.provider[usize::from(key)];
        p.in_flight += 1;
        p.overlapped |= p.in_flight > 1;
    }
}

/// Drops what no decision reads (attempt counts beyond 2, the last error text), so states that
/// differ only there are explored once.
fn abstract_history(record: &mut IdempotencyRecord) {
    record.attempts = record.attempts.min(2);
    record.last_error = None;
    (record.created_at_ms, record.updated_at_ms) = (0, 0);
}

fn tick(timer: &mut i8, floor: i8) {
    *timer = (*timer - 1).max(floor);
}

/// Workers are interchangeable: a state's representative lists them in sorted order, with the
/// receipt holders and the records' owner tokens renamed to match. Used by the DFS checker.
pub fn representative(state: &State) -> State {
    let mut order: Vec<usize> = (0..state.workers.len()).collect();
    order.sort_by(|a, b| state.workers[*a].cmp(&state.workers[*b]));
    let mut position = vec![0u8; order.len()];
    for (new, old) in order.iter().enumerate() {
        position[*old] = new as u8;
    }
    let mut s = state.clone();
    s.workers = order.iter().map(|i| state.workers[*i].clone()).collect();
    for m in &mut s.messages {
        m.holder = m.holder.map(|h| position[usize::from(h)]);
    }
    for record in s.records.iter_mut().flatten() {
        if let Some(owner) = &record.owner
            && let Some(old) = owner.as_str().strip_prefix('w').and_then(|n| n.parse::<u8>().ok())
        {
            record.owner = Some(token(position[usize::from(old)]));
        }
    }
    s
}

impl Model for ProtocolModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            records: vec![None; usize::from(self.keys)],
            messages: (0..self.keys)
                .chain(0..self.duplicated.min(self.keys))
                .map(|key| Message::sent(key, false))
                .collect(),
            expired: vec![false; usize::from(self.keys)],
            workers: vec![Worker::Idle; usize::from(self.workers)],
            provider: vec![ProviderKey::default(); usize::from(self.keys)],
            orphans: Vec::new(),
            crashes: 0,
            stale_write: false,
            settled_changed: false,
            losses: 0,
            completions: vec![0; usize::from(self.keys)],
            lost_answers: 0,
            misjudged: false,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let due = s.workers.iter().any(|w| matches!(w, Worker::Calling { call_deadline, .. } if *call_deadline <= 0))
            || s.orphans.iter().any(|(_, left)| *left <= 0);
        let work_left = !self.all_done(s) || s.workers.iter().any(|w| *w != Worker::Idle);
        if !due && work_left && Self::time_matters(s) {
            actions.push(Action::Tick);
        }
        for (w, worker) in s.workers.iter().enumerate() {
            let w = w as u8;
            match worker {
                Worker::Idle => {
                    for (k, m) in s.messages.iter().enumerate() {
                        if !m.deleted && !m.dead && m.visible_in <= 0 {
                            actions.push(Action::Receive(w, k as u8, false));
                            if s.lost_answers < self.max_lost_answers {
                                actions.push(Action::Receive(w, k as u8, true));
                            }
                        }
                    }
                }
                Worker::Calling { .. } => {
                    actions.push(Action::Finish(w, Answer::Charged(0), false));
                    if self.declines {
                        actions.push(Action::Finish(w, Answer::Declined, false));
                    }
                    if self.faults {
                        actions.push(Action::Finish(w, Answer::Retryable, false));
                        actions.push(Action::Finish(w, Answer::Retryable, true));
                    }
                }
                Worker::Answered { .. } => {
                    actions.push(Action::Settle(w, false));
                    if s.lost_answers < self.max_lost_answers {
                        actions.push(Action::Settle(w, true));
                    }
                }
            }
            if *worker != Worker::Idle && s.crashes < self.max_crashes {
                actions.push(Action::Crash(w));
            }
        }
        for i in 0..s.orphans.len() {
            actions.push(Action::ProviderProcessesOrphan(i, true));
            actions.push(Action::ProviderProcessesOrphan(i, false));
        }
        for (k, record) in s.records.iter().enumerate() {
            match record {
                Some(r) if r.is_expired(NOW_MS) => actions.push(Action::TtlDelete(k as u8)),
                Some(r) if r.status != RecordStatus::InProgress => actions.push(Action::Expire(k as u8)),
                _ => {}
            }
        }
        for (i, m) in s.messages.iter().enumerate() {
            if s.losses < self.max_losses && !m.deleted && !m.dead {
                actions.push(Action::Lose(i as u8));
            }
        }
        for k in 0..s.records.len() {
            // A record it stopped watching, or a payment never claimed that an operator owns,
            // gives the completer nothing to do.
            let watched = match &s.records[k] {
                Some(r) => r.recovery_due_ms.is_some(),
                None => !Self::recorded_dead(s, k),
            };
            if s.completions[k] < self.max_completions && watched && self.abandoned(s, k) {
                actions.push(Action::Complete(k as u8));
            }
        }
        for (i, m) in s.messages.iter().enumerate() {
            // A request still in flight at the provider makes the lookup's answer unknown: the
            // consumer retries the dead message later.
            let unknown = s.provider[usize::from(m.key)].in_flight > 0 && self.rules != Rules::DeadLetterWithoutLookup;
            if m.dead && !m.failure_recorded && !unknown {
                actions.push(Action::RecordDeadLetter(i as u8));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let t = &self.timing;
        let mut s = last.clone();
        match action {
            Action::Tick => {
                for m in &mut s.messages {
                    tick(&mut m.visible_in, 0);
                }
                for (_, left) in &mut s.orphans {
                    tick(left, 0);
                }
                for record in s.records.iter_mut().flatten() {
                    record.lease_until_ms = (record.lease_until_ms - 1000).max(PAST_MS);
                }
                for w in 0..s.workers.len() {
                    let killed = match &mut s.workers[w] {
                        Worker::Idle => false,
                        Worker::Answered { deadline, .. } => {
                            tick(deadline, 0);
                            *deadline <= 0
                        }
                        Worker::Calling { deadline, call_deadline, .. } => {
                            tick(deadline, 0);
                            tick(call_deadline, 0);
                            *deadline <= 0
                        }
                    };
                    if killed {
                        Self::kill(&mut s, w);
                    }
                }
            }
            Action::Receive(w, msg, lost) => {
                let m = &mut s.messages[usize::from(msg)];
                let key = m.key;
                let k = usize::from(key);
                if m.receives >= self.max_receive {
                    // SQS moves it to the DLQ instead of delivering it again.
                    m.dead = true;
                    m.holder = None;
                    return Some(s);
                }
                m.receives += 1;
                m.visible_in = t.visibility as i8;
                m.holder = Some(w);
                // The runner starts it at once: a fresh invocation has its whole timeout left,
                // which covers the provider timeout plus the margin.
                let deadline = t.function_timeout as i8;
                debug_assert!(t.function_timeout >= t.provider_timeout + t.margin);
                let stored = s.records[k].clone();
                let request = ClaimRequest {
                    key: record_key(key),
                    payload_hash: payload(),
                    owner: token(w),
                    now_ms: NOW_MS,
                    lease_until_ms: i64::from(deadline.min(t.max_lease as i8)) * 1000,
                    expires_at_s: i64::from(t.retention),
                    // Due as soon as abandoned: the guard in `abandoned` stands for the real due
                    // time (the payment's age limit) and the quiet period.
                    recovery: (self.max_completions > 0).then_some(Recovery { due_ms: PAST_MS, input: None }),
                };
                if lost {
                    s.lost_answers += 1;
                }
                match self.decide(stored.as_ref()) {
                    decision @ (ClaimDecision::Create | ClaimDecision::TakeOver) => {
                        if matches!(&stored, Some(r) if r.status != RecordStatus::InProgress && !r.is_expired(NOW_MS)) {
                            s.settled_changed = true;
                        }
                        let mut record = claimed_record(stored.as_ref(), decision, &request);
                        abstract_history(&mut record);
                        if lost && !self.recognises(is_own_claim(Some(&record), &request)) {
                            // The retry, refused by this very claim, would take it for another's.
                            s.misjudged = true;
                            s.records[k] = Some(record);
                            Self::hide(&mut s, w, msg, (t.max_lease + 1) as i8);
                            return Some(s);
                        }
                        if s.messages[usize::from(msg)].lookup_only {
                            return Some(self.look_up_only(s, w, msg, record));
                        }
                        s.records[k] = Some(record);
                        Self::start_call(&mut s, key);
                        s.workers[usize::from(w)] =
                            Worker::Calling { msg, deadline, call_deadline: t.provider_timeout as i8 };
                    }
                    ClaimDecision::Refuse(_) if lost && is_own_claim(stored.as_ref(), &request) => {
                        // Another's claim taken for this worker's own: it would call the provider
                        // under a lease it does not hold.
                        s.misjudged = true;
                        Self::hide(&mut s, w, msg, t.backoff as i8);
                    }
                    ClaimDecision::Refuse(Refusal::InProgress { lease_until_ms }) => {
                        // Come back when that lease ends (the processor hides the message).
                        let wait = i8::try_from((lease_until_ms / 1000).max(0) + 1).unwrap_or(i8::MAX);
                        Self::hide(&mut s, w, msg, wait);
                    }
                    ClaimDecision::Refuse(_) => Self::delete(&mut s, w, msg),
                }
            }
            Action::Finish(w, answer, commit_then_timeout) => {
                let Worker::Calling { msg, deadline, .. } = s.workers[usize::from(w)] else { return None };
                let p = &mut s.provider[usize::from(s.messages[usize::from(msg)].key)];
                p.in_flight -= 1;
                let answer = match answer {
                    Answer::Retryable => {
                        if commit_then_timeout {
                            self.commit(p, false);
                        }
                        Answer::Retryable
                    }
                    Answer::Declined => self.commit(p, true),
                    Answer::Charged(_) => self.commit(p, false),
                };
                s.workers[usize::from(w)] = Worker::Answered { msg, deadline, answer };
            }
            Action::Settle(w, lost) => {
                let Worker::Answered { msg, answer, .. } = s.workers[usize::from(w)] else { return None };
                let k = usize::from(s.messages[usize::from(msg)].key);
                let settle = match answer {
                    Answer::Charged(id) => Settle::Complete { result: format!("ch{id}") },
                    Answer::Declined => {
                        Settle::Fail(StoredFailure { code: "declined".into(), detail: "declined".into() })
                    }
                    Answer::Retryable => Settle::Release { reason: "retryable".into(), refund: false },
                };
                let stored = s.records[k].clone();
                let mut recorded = self.allowed(stored.as_ref(), w);
                let request = SettleRequest {
                    key: record_key(s.messages[usize::from(msg)].key),
                    owner: token(w),
                    settle: settle.clone(),
                    now_ms: NOW_MS,
                    expires_at_s: i64::from(t.retention),
                };
                if recorded {
                    let current = stored.clone().expect("allowed settlements need a record");
                    if matches!(answer, Answer::Charged(_)) && current.attempts >= 2 {
                        // A payment tried before: the processor closes its open failure records.
                        for m in s.messages.iter_mut().filter(|m| usize::from(m.key) == k && m.failure_recorded) {
                            m.closed_charged = true;
                        }
                    }
                    if current.owner != Some(token(w)) {
                        s.stale_write = true;
                    }
                    if current.status != RecordStatus::InProgress {
                        s.settled_changed = true;
                    }
                    let mut next = settled_record(&current, &settle, NOW_MS, i64::from(t.retention));
                    abstract_history(&mut next);
                    s.records[k] = Some(next);
                }
                if lost {
                    // The worker learns from its refused retry what became of its write.
                    s.lost_answers += 1;
                    let recognised = self.recognises(is_own_settlement(s.records[k].as_ref(), &request));
                    // A release drops the owner's token, so any release reads as its own; the
                    // worker acts the same on either (the record is free, the message waits).
                    if recognised != recorded && !matches!(settle, Settle::Release { .. }) {
                        s.misjudged = true;
                    }
                    recorded = recognised;
                }
                let settled_by_another = matches!(&stored, Some(r) if r.status != RecordStatus::InProgress);
                match answer {
                    // As the processor does: recorded, or found settled by another → delete;
                    // not the owner of an unsettled record → retry, never drop the outcome.
                    Answer::Charged(_) | Answer::Declined if recorded || settled_by_another => {
                        Self::delete(&mut s, w, msg)
                    }
                    _ => Self::hide(&mut s, w, msg, t.backoff as i8),
                }
                s.workers[usize::from(w)] = Worker::Idle;
            }
            Action::Crash(w) => {
                s.crashes += 1;
                Self::kill(&mut s, usize::from(w));
            }
            Action::ProviderProcessesOrphan(i, commits) => {
                let (key, _) = s.orphans.remove(i);
                let p = &mut s.provider[usize::from(key)];
                p.in_flight -= 1;
                if commits {
                    self.commit(p, false);
                }
            }
            Action::Expire(k) => {
                if let Some(record) = &mut s.records[usize::from(k)] {
                    record.expires_at_s = -1;
                }
                s.expired[usize::from(k)] = true;
            }
            Action::TtlDelete(k) => s.records[usize::from(k)] = None,
            Action::RecordDeadLetter(i) => return self.record_dead_letter(s, i),
            Action::Lose(i) => {
                let m = &mut s.messages[usize::from(i)];
                (m.deleted, m.lost, m.holder) = (true, true, None);
                s.losses += 1;
            }
            Action::Complete(k) => {
                let k = usize::from(k);
                if Self::recorded_dead(&s, k) {
                    // The operator's: no longer watched.
                    if let Some(r) = &mut s.records[k] {
                        r.recovery_due_ms = None;
                    }
                } else {
                    s.completions[k] += 1;
                    // A payment the processor claimed before is past its age limit by the time
                    // the completer takes it; one never enqueued is a fresh payment.
                    let lookup_only = s.records[k].is_some();
                    s.messages.push(Message::sent(k as u8, lookup_only));
                }
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("at most one charge per key", |m: &ProtocolModel, s: &State| {
                m.provider != Provider::HonoursKeys || s.provider.iter().all(|p| p.charges <= 1)
            }),
            Property::always("a COMPLETED record holds the provider's charge", |_: &ProtocolModel, s: &State| {
                s.records.iter().zip(&s.provider).all(|(r, p)| match r {
                    Some(r) if r.status == RecordStatus::Completed => r
                        .result
                        .as_deref()
                        .and_then(|c| c.strip_prefix("ch"))
                        .and_then(|n| n.parse::<u8>().ok())
                        .is_some_and(|n| n >= 1 && n <= p.charges),
                    _ => true,
                })
            }),
            Property::always("no two provider calls for one key at once", |_: &ProtocolModel, s: &State| {
                s.provider.iter().all(|p| !p.overlapped)
            }),
            Property::always(
                "a worker that lost its lease never changes the record",
                |_: &ProtocolModel, s: &State| !s.stale_write,
            ),
            Property::always("a settled record stays settled", |_: &ProtocolModel, s: &State| !s.settled_changed),
            Property::always(
                "a write whose answer was lost is recognised as its own, and only its own",
                |_: &ProtocolModel, s: &State| !s.misjudged,
            ),
            Property::eventually(
                "every message ends settled or dead-lettered with a failure record",
                |m: &ProtocolModel, s: &State| m.all_done(s),
            ),
            Property::always(
                "no payment ends FAILED or DEAD_LETTERED while the provider holds a charge",
                |m: &ProtocolModel, s: &State| {
                    m.provider != Provider::HonoursKeys
                        || !m.all_done(s)
                        || (0..s.records.len()).all(|k| s.provider[k].charges == 0 || !Self::reported_failed(s, k))
                },
            ),
            Property::always("a key-ignoring provider charges once per key", |m: &ProtocolModel, s: &State| {
                m.provider != Provider::IgnoresKeys || s.provider.iter().all(|p| p.charges <= 1)
            }),
            // Reachability: the model is not too constrained to show what it claims to check.
            Property::sometimes("a payment completes after a retry or a take-over", |_: &ProtocolModel, s: &State| {
                s.records.iter().flatten().any(|r| r.status == RecordStatus::Completed && r.attempts >= 2)
            }),
            Property::sometimes("a message is dead-lettered and recorded", |_: &ProtocolModel, s: &State| {
                s.messages.iter().any(|m| m.dead && m.failure_recorded)
            }),
            Property::sometimes("a crashed worker's request is still in flight", |_: &ProtocolModel, s: &State| {
                !s.orphans.is_empty()
            }),
            Property::sometimes("a dead payment is found charged and completed", |_: &ProtocolModel, s: &State| {
                s.messages.iter().any(|m| m.closed_charged)
            }),
            Property::sometimes("a store answer is lost after its write", |m: &ProtocolModel, s: &State| {
                // Not applicable to a configuration without lost answers.
                m.max_lost_answers == 0 || s.lost_answers > 0
            }),
            Property::sometimes(
                "a lost payment is re-enqueued by the completer and settles",
                |m: &ProtocolModel, s: &State| {
                    // Not applicable to a configuration without losses and completer.
                    m.max_completions == 0
                        || (s.completions.iter().any(|n| *n > 0)
                            && s.messages.iter().any(|msg| msg.lost)
                            && m.all_done(s))
                },
            ),
        ]
    }
}
