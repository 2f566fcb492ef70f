//! The main job as a test: the whole pipeline locally (LocalStack, the four functions under the
//! runtime emulator, pollers as event source mappings, the provider simulator with faults), a
//! smaller workload through the intake over HTTP, and the reconciliation's invariants.

use std::time::Duration;

use integration_tests::rare_paths;
use lambda_idempotency::Scope;
use localenv::pipeline::{PROCESSOR_CONCURRENCY, PipelineOptions, Reconciliation, Scenario, drive, run, start};
use localenv::workload::WorkloadSpec;
use payments_core::failures::dynamodb::DynamoDbFailureStore;
use payments_core::failures::{FailureRecord, FailureState, FailureStore};
use payments_core::payment::PaymentStatus;

fn options(port: u16, seed: u64, kill_processor: bool) -> PipelineOptions {
    let mut options = PipelineOptions {
        workload: WorkloadSpec {
            payments: 40,
            concurrent_duplicates: 4,
            key_reuses: 3,
            seed,
            ..WorkloadSpec::default()
        },
        port,
        kill_processor,
        progress: false,
        ..PipelineOptions::default()
    };
    options.simulator.seed = seed;
    options
}

fn check(r: &Reconciliation) {
    println!("{}", r.table());
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let terminal: usize =
        [PaymentStatus::Succeeded, PaymentStatus::Failed, PaymentStatus::DeadLettered].map(|s| r.count(s)).iter().sum();
    assert_eq!(terminal, r.accepted, "every accepted payment reaches exactly one terminal state");
    assert_eq!(r.accepted, 40);
    assert_eq!(r.count(PaymentStatus::DeadLettered), 3, "the scripted dead letters");
    assert_eq!(r.provider_charges, r.count(PaymentStatus::Succeeded), "one charge per SUCCEEDED payment");
    assert!(r.http.get(&422).is_some_and(|n| *n == 3), "key reuse refused: {:?}", r.http);
    assert!(r.replays > 0 && r.retries > 0, "the workload exercised replays and retries");
    // Two of the three bad messages are poison; the third, of an unknown schema version, waits
    // for a processor that reads it and then goes to the DLQ.
    assert_eq!(r.poison, 2);
    assert_eq!(r.given_up.get("unsupported_schema_version"), Some(&1.0));
    check_logs(r);
}

/// Every log line of every function is one JSON object with its fields at the top level, so the
/// Logs Insights query of docs/operations.md (`filter idempotency_key = "…"`) finds a payment's
/// lines, in the intake's log and in the processor's.
fn check_logs(r: &Reconciliation) {
    let mut lines_by_function = std::collections::BTreeMap::new();
    for function in ["intake", "processor", "dlq-consumer", "completer"] {
        let text = std::fs::read_to_string(r.log_dir.join(format!("{function}.log"))).unwrap();
        let mut lines = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let json: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{function}: not JSON ({e}): {line}"));
            if json.get("_aws").is_some() {
                continue; // An EMF metrics line.
            }
            assert_eq!(json["service"], function, "{line}");
            for field in ["timestamp", "level", "message"] {
                assert!(json[field].is_string(), "{function}: no top-level {field}: {line}");
            }
            assert!(humantime::parse_rfc3339(json["timestamp"].as_str().unwrap()).is_ok(), "{line}");
            assert!(json.get("fields").is_none(), "{function}: nested fields: {line}");
            if json["message"] == "message processed" {
                assert!(json["requestId"].is_string(), "the invocation's request id: {line}");
            }
            lines.push(json);
        }
        lines_by_function.insert(function, lines);
    }
    let filter = |function: &str, key: &str| lines_by_function[function].iter().any(|l| l["idempotency_key"] == key);
    let charged = lines_by_function["processor"]
        .iter()
        .find(|l| l["message"] == "message processed" && l["outcome"] == "charged")
        .expect("the processor logged a charge");
    let key = charged["idempotency_key"].as_str().expect("at the top level");
    for function in ["intake", "processor"] {
        assert!(filter(function, key), "filter idempotency_key = \"{key}\" finds nothing in the {function} log");
    }
    // A dead-lettered payment's path runs through all three: intake, processor, DLQ consumer.
    let dead = lines_by_function["dlq-consumer"]
        .iter()
        .filter_map(|l| l["idempotency_key"].as_str())
        .find(|k| !k.is_empty())
        .expect("the DLQ consumer logged a dead payment by its key");
    for function in ["intake", "processor", "dlq-consumer"] {
        assert!(filter(function, dead), "filter idempotency_key = \"{dead}\" finds nothing in the {function} log");
    }
}

/// The main job under faults, then the paths its workload does not take (an operator's redrive
/// of a dead letter whose scope is an AWS account ID that passes the Luhn check, a dead copy of a
/// payment the provider charged, a payment whose message vanished), and the permissions every
/// function's recorded AWS calls needed, against the roles the template gives them: none missing
/// (LocalStack enforces none; AWS would refuse the call), none granted in vain.
#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_settles_under_faults_and_every_function_uses_exactly_its_role() {
    let o = options(9410, 11, false);
    let running = start(&o).await.expect("pipeline started");
    let r = drive(&running, &o).await.expect("pipeline ran");
    check(&r);
    assert!(!r.provider_faults.is_empty(), "faults were injected");

    let (luhn, other) = (Scope::new("405608656907").unwrap(), Scope::new("945807302157").unwrap());
    let redriven = rare_paths::redrive_a_dead_letter(&running, &luhn).await;
    let charged = rare_paths::a_charged_payment_dies(&running, &other).await;
    let vanished = rare_paths::a_message_vanishes(&running, &other).await;
    let records =
        DynamoDbFailureStore::new(aws_sdk_dynamodb::Client::new(running.sdk()), running.stack.failures_table());
    rare_paths::eventually("the redriven payment succeeds", || async {
        rare_paths::status(&running, luhn.as_str(), redriven.as_str()).await == Some(PaymentStatus::Succeeded)
    })
    .await;
    rare_paths::eventually("the charged dead copy is closed, and the vanished payment dead-lettered", || async {
        let closed = |records: Vec<FailureRecord>| records.iter().all(|r| r.state != FailureState::Open);
        let charged = records.for_payment(&other, &charged).await.is_ok_and(|r| r.len() == 2 && closed(r));
        let vanished =
            records.for_payment(&other, &vanished).await.is_ok_and(|r| r.iter().any(|f| f.holds_the_payment()));
        charged && vanished
    })
    .await;
    let ledger = running.simulator_ledger().await;
    let key = payments_core::payment::provider_idempotency_key(&luhn, &redriven);
    assert_eq!(ledger.charges.iter().filter(|c| c.idempotency_key == key).count(), 1, "one charge after the redrive");
    let dead = records.for_payment(&luhn, &redriven).await.unwrap();
    assert!(
        dead.iter().all(|f| matches!(&f.state, FailureState::Closed { note, .. } if note.contains("succeeded"))),
        "{dead:?}"
    );

    let permissions = running.permissions().await.expect("roles read");
    std::fs::write(r.log_dir.join("aws-calls.tsv"), running.aws.calls().table()).unwrap();
    running.shutdown().await;
    println!(
        "AWS calls by function:\n{}",
        permissions.calls.keys().map(|(f, c)| format!("  {f} {c:?}")).collect::<Vec<_>>().join("\n")
    );
    assert!(permissions.findings.lines().is_empty(), "{:#?}", permissions.findings.lines());
    for function in localenv::functions::FUNCTIONS {
        assert!(
            permissions.calls.keys().any(|(f, _)| f == function),
            "{function} made no AWS call through its listener"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_processor_killed_mid_batch_and_restarted_loses_and_duplicates_nothing() {
    let r = run(&options(9420, 12, true)).await.expect("pipeline ran");
    assert!(r.killed);
    assert!(r.interrupted_invocations >= 1, "the kill must interrupt a running batch");
    check(&r);
}

/// The outage scenario, reduced to fit CI: the provider answers only 503s and timeouts for
/// 30 s while payments arrive. Nothing may be dead-lettered, the provider must not be hammered,
/// and everything settles soon after it recovers.
#[tokio::test(flavor = "multi_thread")]
async fn a_provider_outage_dead_letters_nothing_and_settles_soon_after_recovery() {
    let mut o = options(9430, 13, false);
    o.workload.payments = 60;
    o.workload.dead_letters = 0;
    o.scenario = Scenario::Outage { window: Duration::from_secs(30) };
    o.settle_timeout = Duration::from_secs(240);
    let r = run(&o).await.expect("pipeline ran");
    println!("{}", r.table());
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(r.count(PaymentStatus::DeadLettered), 0);
    let incident = r.incident.as_ref().expect("the outage happened");
    assert!(incident.requests_during <= incident.probes + 2 * PROCESSOR_CONCURRENCY, "{incident:?}");
    assert!(incident.recovery_to_settled <= Duration::from_secs(60), "{incident:?}");
    assert!(r.circuit_transitions.get("open").is_some_and(|n| *n >= 1.0), "{:?}", r.circuit_transitions);
    assert!(r.circuit_transitions.get("closed").is_some_and(|n| *n >= 1.0), "closed again after recovery");
    assert!(r.deferred.get("circuit_open").is_some_and(|n| *n > 0.0), "{:?}", r.deferred);
    assert_eq!(r.provider_charges, r.count(PaymentStatus::Succeeded));
}

/// The spike scenario, reduced to fit CI: 300 payments from 64 clients at once against a provider
/// that admits 4 requests per second (429 beyond), the processor paced at 3.6. The provider is
/// never offered more than 1.1 × its limit in any second, nothing is throttled or dead-lettered,
/// and the backlog drains within 1.25 × payments / limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_spike_is_absorbed_by_the_queue_and_the_provider_is_never_offered_more_than_its_limit() {
    let mut o = options(9440, 14, false);
    o.workload = WorkloadSpec { payments: 300, dead_letters: 0, poison: 0, seed: 14, ..WorkloadSpec::default() };
    o.scenario = Scenario::Spike { provider_limit: 4 };
    o.simulator.rates = provider_simulator::FaultRates::default();
    o.clients = 64;
    o.settle_timeout = Duration::from_secs(300);
    let r = run(&o).await.expect("pipeline ran");
    println!("{}", r.table());
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let seen = &r.provider_load.seen;
    assert!(seen.peak_offered_per_s <= 4, "{seen:?}");
    assert_eq!(seen.throttled_by_rate, 0, "a paced fleet meets no 429: {seen:?}");
    assert_eq!(r.count(PaymentStatus::DeadLettered), 0);
    assert_eq!(r.accepted, 300);
    assert!(r.drain_time <= Duration::from_secs_f64(1.25 * 300.0 / 4.0), "{:?}", r.drain_time);
    assert!(r.queue_depth.iter().any(|d| *d > 50), "the queue absorbed the burst: {:?}", r.queue_depth);
}

/// The provider refuses the key the stack's secret holds: every payment ends FAILED with a reason
/// that names the key, nothing is charged, and the alarm's metric counts each one.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_provider_key_fails_every_payment_clearly_and_is_counted_for_the_alarm() {
    let mut o = options(9450, 15, false);
    o.workload = WorkloadSpec { payments: 20, dead_letters: 0, poison: 0, seed: 15, ..WorkloadSpec::default() };
    o.simulator.rates = provider_simulator::FaultRates::default();
    o.provider_refuses_key = true;
    let r = run(&o).await.expect("pipeline ran");
    println!("{}", r.table());
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(r.count(PaymentStatus::Failed), 20, "{:?}", r.statuses);
    assert_eq!(r.provider_charges, 0);
    assert_eq!(r.metrics["processor.ProviderUnauthorized"], 20.0);
    assert_eq!(r.retry_reasons.get("provider_unauthorized"), Some(&20.0), "{:?}", r.retry_reasons);
}

/// Faults of the project's own dependencies, reduced to fit CI: 10 % of the functions' DynamoDB
/// item, SQS message and Secrets Manager calls throttled, failing with 500, dropped before the
/// service saw them, answered late, or committed with the answer lost. Judged by the books: no
/// payment charged twice or lost, none charged while its client was never told, and the
/// payment-level metrics equal to the records although answers were lost.
#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_outlives_faults_of_its_own_aws_dependencies() {
    let mut o = options(9460, 16, false);
    o.aws_faults = Some(localenv::aws_faults::FaultPlan { rate: 0.1, slow: Duration::from_secs(6), seed: 16 });
    o.settle_timeout = Duration::from_secs(420);
    let r = run(&o).await.expect("pipeline ran");
    check(&r);
    assert_eq!((r.charged_untold, r.told), (0, r.accepted), "every client learnt its payment's outcome");
    let lost = r.aws_faults.iter().filter(|(kind, _)| kind.ends_with("lost_after_commit")).map(|(_, n)| n).sum::<u64>();
    assert!(lost > 0, "answers were lost after a commit: {:?}", r.aws_faults);
    assert!(r.aws_faults.keys().any(|k| k.starts_with("dynamodb:UpdateItem")), "{:?}", r.aws_faults);
}
