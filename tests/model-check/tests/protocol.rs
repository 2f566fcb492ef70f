//! Exhaustive checks of the idempotency protocol (3 workers, 2 keys, up to 2 crashes), and of
//! each weakened variant: the checker must find the counterexample its guard prevents.

use std::time::Instant;

use model_check::{ProtocolModel, Provider, Rules, State, Timing, representative};
use stateright::HasDiscoveries;
use stateright::{Checker, Model};

const CHARGES: &str = "at most one charge per key";
const RESULT: &str = "a COMPLETED record holds the provider's charge";
const OVERLAP: &str = "no two provider calls for one key at once";
const STALE: &str = "a worker that lost its lease never changes the record";
const SETTLED: &str = "a settled record stays settled";
const TERMINAL: &str = "every message ends settled or dead-lettered with a failure record";
const OWN_WRITES: &str = "a write whose answer was lost is recognised as its own, and only its own";

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Exhaustive: depth-first with worker symmetry reduction (the memory stays flat).
fn explore(model: ProtocolModel, label: &str) -> impl Checker<ProtocolModel> {
    let started = Instant::now();
    let checker = model.checker().threads(threads()).symmetry_fn(representative).spawn_dfs().join();
    report(&checker, label, started);
    checker
}

/// Breadth-first until `property` fails: its shortest counterexample.
fn find(model: ProtocolModel, property: &'static str, label: &str) -> impl Checker<ProtocolModel> {
    let started = Instant::now();
    let checker =
        model.checker().threads(threads()).finish_when(HasDiscoveries::AnyOf([property].into())).spawn_bfs().join();
    report(&checker, label, started);
    checker
}

fn report(checker: &impl Checker<ProtocolModel>, label: &str, started: Instant) {
    println!(
        "{label}: {} states ({} unique), max depth {}, {:.1} s",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64()
    );
}

/// Prints the shortest counterexample found for `property` and returns its length.
fn counterexample(checker: &impl Checker<ProtocolModel>, property: &'static str) -> usize {
    let path = checker.assert_any_discovery(property);
    let actions = path.clone().into_actions();
    println!("counterexample for \"{property}\" ({} steps):", actions.len());
    for action in &actions {
        println!("  {action:?}");
    }
    let last: &State = path.last_state();
    println!(
        "  final: records {:?}",
        last.records.iter().map(|r| r.as_ref().map(|r| (r.status, r.owner.clone()))).collect::<Vec<_>>()
    );
    actions.len()
}

#[test]
fn the_protocol_holds_with_a_provider_that_honours_keys() {
    let checker =
        explore(ProtocolModel::standard(Provider::HonoursKeys, Rules::Real), "honouring provider, real rules");
    // Every "always" and "eventually" property holds, and every "sometimes" is reached.
    checker.assert_properties();
    checker.assert_no_discovery(CHARGES);
}

#[test]
fn with_a_provider_that_ignores_keys_the_lease_keeps_calls_apart() {
    // Declines are left out here: a decline settles like a charge and cannot make calls overlap;
    // the honouring run above covers them.
    let model = ProtocolModel { declines: false, ..ProtocolModel::standard(Provider::IgnoresKeys, Rules::Real) };
    let checker = explore(model, "key-ignoring provider, real rules");
    for property in [RESULT, OVERLAP, STALE, SETTLED, TERMINAL] {
        checker.assert_no_discovery(property);
    }
    // Without provider idempotency, a crash or a commit-then-timeout followed by a retry does
    // charge twice: the reason the key is passed to the provider.
    counterexample(&checker, CHARGES_IGNORED);
}

/// For a key-ignoring provider the "one charge" property is expected to fail; the model states it
/// separately so the test can show it.
const CHARGES_IGNORED: &str = "a key-ignoring provider charges once per key";

#[test]
fn a_lease_shorter_than_the_provider_timeout_lets_calls_overlap() {
    let mut model = ProtocolModel::standard(Provider::IgnoresKeys, Rules::Real);
    // A lease (1 s) shorter than the provider's timeout (2 s).
    model.timing = Timing { max_lease: 1, provider_timeout: 2, ..Timing::default() };
    let checker = find(model, OVERLAP, "lease shorter than the provider timeout");
    counterexample(&checker, OVERLAP);
}

#[test]
fn without_the_owner_condition_a_stale_worker_overwrites_the_new_owner() {
    let checker =
        find(ProtocolModel::standard(Provider::HonoursKeys, Rules::NoOwnerCondition), STALE, "no owner condition");
    counterexample(&checker, STALE);
}

#[test]
fn without_the_lease_expiry_check_two_workers_call_at_once() {
    let checker = find(
        ProtocolModel::standard(Provider::IgnoresKeys, Rules::NoLeaseExpiryCheck),
        OVERLAP,
        "no lease-expiry check",
    );
    counterexample(&checker, OVERLAP);
}

#[test]
fn unconditional_completion_as_powertools_does_it_rewrites_settled_records() {
    let checker = find(
        ProtocolModel::standard(Provider::HonoursKeys, Rules::UnconditionalSettle),
        SETTLED,
        "unconditional settle",
    );
    counterexample(&checker, SETTLED);
}

const REPORTED: &str = "no payment ends FAILED or DEAD_LETTERED while the provider holds a charge";

#[test]
fn dead_lettering_without_asking_the_provider_reports_a_charged_payment_dead() {
    let checker = find(
        ProtocolModel::standard(Provider::HonoursKeys, Rules::DeadLetterWithoutLookup),
        REPORTED,
        "dead-letter without a lookup",
    );
    counterexample(&checker, REPORTED);
}

#[test]
fn a_completer_finishes_what_a_lost_message_left_without_breaking_any_rule() {
    // Lose one message at any point (before the intake's SendMessage, mid-retry, after a crash),
    // let the completer re-enqueue once: every property holds, and a lost payment settles.
    let checker = explore(
        ProtocolModel::with_completer(Provider::HonoursKeys, Rules::Real),
        "honouring provider, a lost message, the completer",
    );
    checker.assert_properties();
}

#[test]
fn without_the_completer_a_lost_message_leaves_its_payment_unsettled() {
    let model =
        ProtocolModel { max_completions: 0, ..ProtocolModel::with_completer(Provider::HonoursKeys, Rules::Real) };
    let checker = find(model, TERMINAL, "a lost message, no completer");
    counterexample(&checker, TERMINAL);
}

#[test]
fn a_store_answer_lost_after_its_write_is_recognised_and_every_rule_holds() {
    let model = ProtocolModel::with_lost_answers(Provider::HonoursKeys, Rules::Real);
    let checker = explore(model, "lost store answers, real rules");
    checker.assert_properties();
}

#[test]
fn without_recognising_its_own_writes_a_worker_takes_its_own_claim_for_another_s() {
    let model = ProtocolModel::with_lost_answers(Provider::HonoursKeys, Rules::NoOwnWriteRecognition);
    let checker = find(model, OWN_WRITES, "lost store answers, no recognition");
    assert!(counterexample(&checker, OWN_WRITES) <= 4, "a claim whose answer is lost is enough");
}
