//! The reconciliation of a run: the books read from the stores themselves, the provider's
//! ledger, what the clients were told, and the functions' metrics, with every invariant checked
//! against them. Judged by the money and the records, never by what a client happened to hear:
//! a client that was answered 503 may still have had its payment accepted and charged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use lambda_idempotency::dynamodb::DynamoDbStore;
use lambda_idempotency::{IdempotencyRecord, RecordKey, RecordStatus};
use payments_core::failures::dynamodb::DynamoDbFailureStore;
use payments_core::failures::{FailureKind, FailureRecord, FailureState, FailureStore};
use payments_core::payment::{PaymentMessage, PaymentStatus, derive_view, process_key, provider_idempotency_key};
use provider_simulator::LedgerSnapshot;

use crate::emf_log::MetricTotals;
use crate::load::{ProviderLoad, sparkline};
use crate::stack::Stack;
use crate::workload::Plan;

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct Reconciliation {
    /// Distinct payments the intake recorded (its records, not what its clients heard).
    pub accepted: usize,
    /// Of them, those whose client was told: a `202`, or a status read.
    pub told: usize,
    /// Charged payments whose client was never told (a violation each).
    pub charged_untold: usize,
    /// How many payments ended in each status.
    pub statuses: BTreeMap<PaymentStatus, usize>,
    /// Intake answers by HTTP status.
    pub http: BTreeMap<u16, u64>,
    /// Intake replays (client retries answered from the stored response).
    pub replays: u64,
    /// Processor duplicates suppressed (redeliveries and copies that did nothing).
    pub duplicates_suppressed: u64,
    /// Processor retries (retryable failures).
    pub retries: u64,
    /// Retry reasons.
    pub retry_reasons: BTreeMap<String, f64>,
    /// Poison messages recorded.
    pub poison: u64,
    /// Charges in the provider's ledger.
    pub provider_charges: usize,
    /// Charge requests the provider received.
    pub provider_requests: u64,
    /// Faults the provider injected, by kind.
    pub provider_faults: BTreeMap<String, u64>,
    /// Open failure records.
    pub open_failure_records: usize,
    /// Metric totals the reconciliation compared.
    pub metrics: BTreeMap<String, f64>,
    /// p50 / p99 processing latency (ms), from the processor's EMF.
    pub latency_p50_p99: (Option<f64>, Option<f64>),
    /// Whether the processor was killed mid-batch.
    pub killed: bool,
    /// Processor invocations that never answered (the killed one): their messages came back
    /// after the visibility timeout.
    pub interrupted_invocations: u64,
    /// Wall time from first request to settled (every payment terminal, every status read back).
    pub settle_time: Duration,
    /// Wall time from first request to both queues empty for good (every message handled).
    pub drain_time: Duration,
    /// Which scenario ran.
    pub scenario: &'static str,
    /// What the incident did, when there was one.
    pub incident: Option<IncidentFigures>,
    /// Payments the processor gave up (retry budget or age), by reason.
    pub given_up: BTreeMap<String, f64>,
    /// Deliveries that never reached the provider (circuit open, claim held elsewhere), by reason.
    pub deferred: BTreeMap<String, f64>,
    /// Circuit breaker transitions, by the phase entered.
    pub circuit_transitions: BTreeMap<String, f64>,
    /// Lookups of payments whose outcome was unknown (processor and DLQ consumer), by answer.
    pub outcome_lookups: BTreeMap<String, f64>,
    /// Abandoned records the completer handled, by outcome.
    pub recovered: BTreeMap<String, f64>,
    /// Payments left as abandoned acceptances (an intake that died after its claim).
    pub abandoned: usize,
    /// p50 / p99 time to an intake answer (ms), every request counted.
    pub intake_latency_p50_p99: (Option<f64>, Option<f64>),
    /// The payments queue's depth once a second, from the first request to settled.
    pub queue_depth: Vec<u64>,
    /// The provider's limit, the processor's pace, and the peaks the provider saw.
    pub provider_load: ProviderLoad,
    /// Where the functions' logs of this run are (one file per function).
    pub log_dir: PathBuf,
    /// Provider keys charged more than once (a violation each).
    pub double_charges: usize,
    /// Accepted payments that ended in no terminal state, or in one their charges contradict.
    pub lost: usize,
    /// The functions' AWS calls and what their roles say of them.
    pub permissions: Permissions,
    /// AWS faults injected, by `operation kind`.
    pub aws_faults: BTreeMap<String, u64>,
    /// Broken invariants: empty on a good run.
    pub violations: Vec<String>,
}

impl Reconciliation {
    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let rows = [self.outcome_rows(), self.traffic_rows(), self.timing_rows(), self.incident_rows()].concat();
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::from("| what | count |\n|---|---|\n");
        for (k, v) in rows {
            out.push_str(&format!("| {k:width$} | {v} |\n"));
        }
        let unused: Vec<String> =
            self.permissions.findings.lines().into_iter().filter(|l| l.ends_with("never used")).collect();
        if !unused.is_empty() {
            out.push_str(
                "\nGranted by the functions' roles, used by no call of this run (rare paths, or to remove):\n",
            );
            for line in unused {
                out.push_str(&format!("  - {line}\n"));
            }
        }
        if self.violations.is_empty() {
            out.push_str("\nInvariants hold: no payment charged twice, none lost, metrics agree with the ledger.\n");
        } else {
            out.push_str("\nVIOLATIONS:\n");
            for v in &self.violations {
                out.push_str(&format!("  - {v}\n"));
            }
        }
        out
    }

    /// How many payments ended in `status`.
    pub fn count(&self, status: PaymentStatus) -> usize {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    fn not_settled(&self) -> usize {
        self.accepted
            - self.count(PaymentStatus::Succeeded)
            - self.count(PaymentStatus::Failed)
            - self.count(PaymentStatus::DeadLettered)
    }

    /// What became of the payments, and of the messages that were not payments.
    fn outcome_rows(&self) -> Vec<(String, String)> {
        let looked = |answer: &str| self.outcome_lookups.get(answer).copied().unwrap_or(0.0);
        let recovered = self.recovered.iter().filter(|(k, _)| *k != "skipped").map(|(k, v)| (k.clone(), *v));
        vec![
            row("accepted payments", self.accepted),
            row("  succeeded", self.count(PaymentStatus::Succeeded)),
            row("  failed (declined)", self.count(PaymentStatus::Failed)),
            row("  dead-lettered", self.count(PaymentStatus::DeadLettered)),
            row("  not settled", self.not_settled()),
            row("told to their clients (202 or a status read)", self.told),
            row("charged but never told to their client", self.charged_untold),
            row("duplicates suppressed (intake replays)", self.replays),
            row("duplicates suppressed (processor)", self.duplicates_suppressed),
            row("retries", self.retries),
            row("poison messages recorded", self.poison),
            row("open failure records", self.open_failure_records),
            row("charged twice / lost", format!("{} / {}", self.double_charges, self.lost)),
            row("failure reasons (retried and permanent)", counts(&self.retry_reasons)),
            row("given up by the processor (to the DLQ)", counts(&self.given_up)),
            row("deferred without a provider call", counts(&self.deferred)),
            row("circuit breaker transitions", counts(&self.circuit_transitions)),
            row(
                "abandoned acceptances (intake died after its claim)",
                format!("{}; the completer: {}", self.abandoned, counts(&recovered.collect())),
            ),
            row(
                "unknown outcomes",
                format!(
                    "{} resolved by lookup (charged {}, not charged {}), {} lookups unanswered and retried, {} left \
                     unknown",
                    looked("charged") + looked("not_charged"),
                    looked("charged"),
                    looked("not_charged"),
                    looked("unknown"),
                    self.not_settled(),
                ),
            ),
        ]
    }

    /// What the intake answered and what the provider was sent.
    fn traffic_rows(&self) -> Vec<(String, String)> {
        vec![
            row("intake answers", counts(&self.http)),
            row("provider charge requests", self.provider_requests),
            row("provider faults injected", counts(&self.provider_faults)),
            row("provider charges", self.provider_charges),
            row("provider peak request rate", self.provider_load.describe()),
            row(
                "provider requests per payment",
                format!("{:.2}", self.provider_requests as f64 / self.accepted.max(1) as f64),
            ),
            row("AWS calls by the functions", self.permissions.summary()),
            row("AWS faults injected", counts(&self.aws_faults)),
            row(
                "AWS calls their roles refuse / grants unused",
                format!("{} / {}", self.permissions.findings.denied.len(), self.permissions.findings.unused.len()),
            ),
            row("processor killed mid-batch", if self.killed { "yes" } else { "no" }),
            row("invocations interrupted", self.interrupted_invocations),
            row("scenario", self.scenario),
        ]
    }

    /// How long things took.
    fn timing_rows(&self) -> Vec<(String, String)> {
        let ms = |(p50, p99): (Option<f64>, Option<f64>)| {
            format!("{:.1} / {:.1}", p50.unwrap_or(f64::NAN), p99.unwrap_or(f64::NAN))
        };
        vec![
            row("processing latency p50 / p99 (ms)", ms(self.latency_p50_p99)),
            row("intake latency p50 / p99 (ms)", ms(self.intake_latency_p50_p99)),
            row(
                format!("queue depth, 1 sample/s (max {})", self.queue_depth.iter().max().copied().unwrap_or(0)),
                sparkline(&self.queue_depth, 60),
            ),
            row("drained in (queues empty)", format!("{:.1} s", self.drain_time.as_secs_f64())),
            row("settled in (statuses read back)", format!("{:.1} s", self.settle_time.as_secs_f64())),
        ]
    }

    /// The provider incident of an outage or brownout run.
    fn incident_rows(&self) -> Vec<(String, String)> {
        let Some(incident) = &self.incident else { return Vec::new() };
        vec![
            row("incident window", format!("{} s", incident.window.as_secs())),
            row(
                "provider requests during the incident (probes overall)",
                format!("{} ({})", incident.requests_during, incident.probes),
            ),
            row(
                "provider requests per payment during the incident",
                format!("{:.2}", incident.requests_during as f64 / self.accepted.max(1) as f64),
            ),
            row("from recovery to settled", format!("{:.1} s", incident.recovery_to_settled.as_secs_f64())),
        ]
    }
}

/// One row of the reconciliation table.
fn row(what: impl Into<String>, value: impl ToString) -> (String, String) {
    (what.into(), value.to_string())
}

/// Counts by name, as `name×count` pairs.
fn counts<K: std::fmt::Display, V: std::fmt::Display>(by_name: &BTreeMap<K, V>) -> String {
    by_name.iter().map(|(k, v)| format!("{k}×{v}")).collect::<Vec<_>>().join(" ")
}

/// Every AWS call of the run by function (how often each was made), and what the functions'
/// roles say of them.
#[derive(Debug, Clone, Default)]
pub struct Permissions {
    /// (function, call) → times made.
    pub calls: BTreeMap<(String, crate::aws_proxy::AwsCall), u64>,
    /// Calls the roles refuse; grants no call used.
    pub findings: crate::iam::Findings,
}

impl Permissions {
    /// A violation per call a role refuses.
    pub fn denied_lines(&self) -> Vec<String> {
        let denied = crate::iam::Findings { unused: Default::default(), ..self.findings.clone() };
        denied.lines()
    }

    /// `function: N calls (K kinds)` for every function.
    fn summary(&self) -> String {
        let mut by_function: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
        for ((function, _), n) in &self.calls {
            let entry = by_function.entry(function).or_default();
            entry.0 += n;
            entry.1 += 1;
        }
        by_function.iter().map(|(f, (n, kinds))| format!("{f} {n} ({kinds} kinds)")).collect::<Vec<_>>().join(", ")
    }
}

/// What a provider incident came to.
#[derive(Debug, Clone, Default)]
pub struct IncidentFigures {
    /// How long the provider misbehaved.
    pub window: Duration,
    /// Charge requests the provider received during the window.
    pub requests_during: u64,
    /// Of all requests, the circuit breaker's probes.
    pub probes: u64,
    /// From the provider's recovery to an empty queue with every payment settled.
    pub recovery_to_settled: Duration,
}

/// What the stores hold of one payment the intake recorded.
#[derive(Debug, Clone)]
pub struct RecordedPayment {
    /// The amount it was accepted with.
    pub amount: u64,
    /// Its status, derived from its records as the intake derives it.
    pub status: PaymentStatus,
    /// Its intake record is complete (the acceptance finished, by the intake or the completer).
    pub acceptance_finished: bool,
    /// The provider key it is charged under.
    pub provider_key: String,
}

/// The books of a run, read from the stores themselves (not through the functions, and not
/// from what any client heard): every payment the intake recorded, and every failure record.
#[derive(Debug, Clone, Default)]
pub struct Books {
    /// By (scope, key).
    pub payments: BTreeMap<(String, String), RecordedPayment>,
    /// Every failure record.
    pub failure_records: Vec<FailureRecord>,
}

impl Books {
    /// Reads the books of `stack` (strongly consistent scans: a reconciliation's query).
    pub async fn read(sdk: &aws_config::SdkConfig, stack: &Stack) -> Result<Self, String> {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let store = DynamoDbStore::new(dynamodb.clone(), stack.idempotency_table());
        let failures = DynamoDbFailureStore::new(dynamodb, stack.failures_table());
        let failure_records = failures.list(false).await.map_err(|e| e.to_string())?;
        let processing: BTreeMap<String, IdempotencyRecord> = store
            .records_of("process")
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|r| (r.partition_key.clone(), r))
            .collect();
        let mut payments = BTreeMap::new();
        for intake in store.records_of("intake").await.map_err(|e| e.to_string())? {
            let key = RecordKey::from_partition_key(&intake.partition_key).map_err(|e| e.to_string())?;
            let amount = intake
                .input
                .as_deref()
                .and_then(|m| PaymentMessage::parse(m).ok())
                .map_or(0, |m| m.payment.amount.get());
            let own: Vec<FailureRecord> = failure_records
                .iter()
                .filter(|f| f.scope.as_ref() == Some(&key.scope) && f.idempotency_key.as_ref() == Some(&key.key))
                .cloned()
                .collect();
            let process = processing.get(&process_key(&key.scope, &key.key).partition_key());
            let Some(view) = derive_view(&key.key, Some(&intake), process, &own) else { continue };
            payments.insert(
                (key.scope.as_str().to_owned(), key.key.as_str().to_owned()),
                RecordedPayment {
                    amount,
                    status: view.status,
                    acceptance_finished: intake.status == RecordStatus::Completed,
                    provider_key: provider_idempotency_key(&key.scope, &key.key),
                },
            );
        }
        Ok(Self { payments, failure_records })
    }

    /// Whether every recorded payment is in a terminal state and every acceptance finished.
    pub fn settled(&self) -> bool {
        self.payments.values().all(|p| p.acceptance_finished && is_terminal(p.status))
    }

    /// Payments in a terminal state.
    pub fn terminal(&self) -> usize {
        self.payments.values().filter(|p| is_terminal(p.status)).count()
    }
}

/// SUCCEEDED, FAILED or DEAD_LETTERED.
pub fn is_terminal(status: PaymentStatus) -> bool {
    matches!(status, PaymentStatus::Succeeded | PaymentStatus::Failed | PaymentStatus::DeadLettered)
}

/// The money invariants, judged by the books and the provider's ledger: at most one charge per
/// provider key; every charge belongs to a payment the intake recorded; every recorded payment
/// is terminal; a SUCCEEDED one has exactly one charge of its amount, a FAILED or DEAD_LETTERED
/// one none; and no charged payment's client was left untold.
pub fn check_money(r: &mut Reconciliation, ledger: &LedgerSnapshot, books: &Books, told: &BTreeSet<(String, String)>) {
    let mut per_key: BTreeMap<&str, usize> = BTreeMap::new();
    for charge in &ledger.charges {
        *per_key.entry(charge.idempotency_key.as_str()).or_default() += 1;
    }
    for (key, n) in &per_key {
        if *n > 1 {
            r.double_charges += 1;
            r.violations.push(format!("provider key {key} charged {n} times"));
        }
    }
    let recorded_keys: BTreeSet<&str> = books.payments.values().map(|p| p.provider_key.as_str()).collect();
    for charge in ledger.charges.iter().filter(|c| !recorded_keys.contains(c.idempotency_key.as_str())) {
        r.violations.push(format!("charge {} belongs to no payment the intake recorded", charge.id));
    }
    for ((scope, key), payment) in &books.payments {
        let charges: Vec<_> = ledger.charges.iter().filter(|c| c.idempotency_key == payment.provider_key).collect();
        let wrong = match payment.status {
            PaymentStatus::Succeeded if charges.len() != 1 || charges[0].amount != payment.amount => {
                Some(format!("SUCCEEDED with {} charges", charges.len()))
            }
            PaymentStatus::Succeeded => None,
            ended @ (PaymentStatus::Failed | PaymentStatus::DeadLettered) if !charges.is_empty() => {
                Some(format!("is {ended:?} but was charged"))
            }
            PaymentStatus::Failed | PaymentStatus::DeadLettered => None,
            other => Some(format!("lost: ended {other:?}")),
        };
        if let Some(wrong) = wrong {
            r.lost += 1;
            r.violations.push(format!("{scope}/{key} {wrong}"));
        }
        if !charges.is_empty() && !told.contains(&(scope.clone(), key.clone())) {
            r.charged_untold += 1;
            r.violations.push(format!("{scope}/{key} was charged, and its client was never told"));
        }
    }
}

/// The payment-level metrics (each counted once per payment, by the write that made the
/// transition) equal the books, whatever answers were lost on the way.
pub fn check_metrics(r: &mut Reconciliation, killed: bool, plan: &Plan, m: &MetricTotals, books: &Books) {
    // The acceptances finished by the intake and by the completer are every recorded one, and
    // the planted abandoned ones are among the completer's.
    let finished = r.recovered.get("enqueued").copied().unwrap_or(0.0) as usize;
    let accepted_metric = r.metrics["intake.Accepted"] as usize;
    if accepted_metric + finished != books.payments.len() {
        r.violations.push(format!(
            "metric Accepted = {accepted_metric} and the completer finished {finished} acceptances, but the intake recorded {}",
            books.payments.len()
        ));
    }
    if finished < plan.abandoned.len() {
        r.violations.push(format!(
            "the completer finished {finished} acceptances, {} were planted abandoned",
            plan.abandoned.len()
        ));
    }
    // A SIGKILLed instance loses the metrics of the batch it was running (EMF is flushed per
    // invocation), so that run allows a shortfall of at most one batch.
    let slack = if killed { 10 } else { 0 };
    let succeeded = r.count(PaymentStatus::Succeeded);
    let completed =
        m.sum("processor", "Processed") as usize + m.sum("dlq-consumer", "DeadLetterResolvedCharged") as usize;
    if completed > succeeded || succeeded - completed > slack {
        r.violations.push(format!(
            "metrics Processed + DeadLetterResolvedCharged = {completed}, but {succeeded} payments SUCCEEDED"
        ));
    }
    let failed = (r.count(PaymentStatus::Failed), m.sum("processor", "FailedPermanently") as usize);
    if failed.1 > failed.0 || failed.0 - failed.1 > slack {
        r.violations.push(format!("metric FailedPermanently = {}, but {} payments FAILED", failed.1, failed.0));
    }
    // A message of a schema version this code does not read is not poison: it waits for a
    // processor that reads it, then goes to the DLQ (recorded, but no payment's status).
    let future = plan
        .poison
        .iter()
        .filter(|body| PaymentMessage::parse(body).is_err_and(|e| e.code() == "unsupported_schema_version"))
        .count();
    let open_dead = books
        .failure_records
        .iter()
        .filter(|f| f.kind == FailureKind::DeadLetter && f.state == FailureState::Open)
        .count();
    if r.metrics["dlq-consumer.DeadLettered"] as usize != open_dead {
        r.violations.push(format!(
            "metric DeadLettered = {}, but {open_dead} open dead-letter records ({future} of them messages of an unknown schema version)",
            r.metrics["dlq-consumer.DeadLettered"]
        ));
    }
    let poison = plan.poison.len() - future;
    if r.poison < poison as u64 && !killed {
        r.violations.push(format!("{poison} poison messages sent, {} recorded", r.poison));
    }
}
