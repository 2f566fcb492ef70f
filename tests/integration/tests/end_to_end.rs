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
