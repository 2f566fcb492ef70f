//! The main job as a test: the whole pipeline locally (LocalStack, the four functions under the
//! runtime emulator, pollers as event source mappings, the provider simulator with faults), a
//! smaller workload through the intake over HTTP, and the reconciliation's invariants.

use std::time::Duration;

use localenv::pipeline::{PROCESSOR_CONCURRENCY, PipelineOptions, Reconciliation, Scenario, run};
use localenv::workload::WorkloadSpec;

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
        ["SUCCEEDED", "FAILED", "DEAD_LETTERED"].iter().map(|s| r.statuses.get(*s).copied().unwrap_or(0)).sum();
    assert_eq!(terminal, r.accepted, "every accepted payment reaches exactly one terminal state");
    assert_eq!(r.accepted, 40);
    assert_eq!(r.statuses.get("DEAD_LETTERED"), Some(&3), "the scripted dead letters");
    assert_eq!(r.provider_charges, r.statuses["SUCCEEDED"], "one charge per SUCCEEDED payment");
    assert!(r.http.get(&422).is_some_and(|n| *n == 3), "key reuse refused: {:?}", r.http);
    assert!(r.replays > 0 && r.retries > 0, "the workload exercised replays and retries");
    // Two of the three bad messages are poison; the third, of an unknown schema version, waits
    // for a processor that reads it and then goes to the DLQ.
    assert_eq!(r.poison, 2);
    assert_eq!(r.given_up.get("unsupported_schema_version"), Some(&1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_settles_under_faults_with_every_invariant() {
    let r = run(&options(9410, 11, false)).await.expect("pipeline ran");
    check(&r);
    assert!(!r.provider_faults.is_empty(), "faults were injected");
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
    assert_eq!(r.statuses.get("DEAD_LETTERED"), None);
    let incident = r.incident.as_ref().expect("the outage happened");
    assert!(incident.requests_during <= incident.probes + 2 * PROCESSOR_CONCURRENCY, "{incident:?}");
    assert!(incident.recovery_to_settled <= Duration::from_secs(60), "{incident:?}");
    assert!(r.circuit_transitions.get("open").is_some_and(|n| *n >= 1.0), "{:?}", r.circuit_transitions);
    assert!(r.circuit_transitions.get("closed").is_some_and(|n| *n >= 1.0), "closed again after recovery");
    assert!(r.deferred.get("circuit_open").is_some_and(|n| *n > 0.0), "{:?}", r.deferred);
    assert_eq!(r.provider_charges, r.statuses["SUCCEEDED"]);
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
    o.simulator.capacity.rate_per_s = 4;
    o.provider_rate_limit = Some(3.6);
    o.clients = 64;
    o.settle_timeout = Duration::from_secs(300);
    let r = run(&o).await.expect("pipeline ran");
    println!("{}", r.table());
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let seen = &r.provider_load.seen;
    assert!(seen.peak_offered_per_s <= 4, "{seen:?}");
    assert_eq!(seen.throttled_by_rate, 0, "a paced fleet meets no 429: {seen:?}");
    assert_eq!(r.statuses.get("DEAD_LETTERED"), None);
    assert_eq!(r.accepted, 300);
    assert!(r.drain_time <= Duration::from_secs_f64(1.25 * 300.0 / 4.0), "{:?}", r.drain_time);
    assert!(r.queue_depth.iter().any(|d| *d > 50), "the queue absorbed the burst: {:?}", r.queue_depth);
}
