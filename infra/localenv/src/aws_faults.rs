//! Faults of the project's own dependencies, injected between the functions and LocalStack
//! ([`crate::aws_proxy`]): for a seeded share of the calls to the operations AWS gets wrong in
//! practice, DynamoDB's and SQS's and Secrets Manager's answer is a throttle, a 500, a
//! connection dropped before the call reached the service, an answer lost after the service
//! committed the call, or an answer that comes too late. The SDK retries what it can; what it
//! cannot (and what it retries into a condition the first, lost answer already met) is the
//! functions' to handle. Every fault is tallied by operation and kind for the run's report.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The operations faults are injected into: the item and message calls whose outcome the
/// functions must survive, the provider key's secret, and the breaker's item (a DynamoDB item
/// like the others). Polling (ReceiveMessage, queue attributes and URLs) is left alone.
pub const FAULTED_OPERATIONS: [&str; 10] = [
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",
    "dynamodb:BatchExecuteStatement",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:Query",
    "sqs:SendMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "secretsmanager:GetSecretValue",
];

/// What a faulted call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// `400 ThrottlingException`: the service did nothing.
    Throttle,
    /// `500 InternalFailure`: the service did nothing.
    ServerError,
    /// The connection closes before the call is forwarded: the service never saw it.
    DroppedBefore,
    /// The call is forwarded and committed, then the connection closes: the answer is lost.
    LostAfterCommit,
    /// The call is forwarded and committed, and the answer comes after [`FaultPlan::slow`].
    Slow,
}

impl Fault {
    /// `throttle`, `500`, `dropped_before`, `lost_after_commit`, `slow`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttle => "throttle",
            Self::ServerError => "500",
            Self::DroppedBefore => "dropped_before",
            Self::LostAfterCommit => "lost_after_commit",
            Self::Slow => "slow",
        }
    }
}

/// How often, and how, calls fail.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultPlan {
    /// Share of the [`FAULTED_OPERATIONS`] calls that fail (0 to 1).
    pub rate: f64,
    /// How late a slow answer comes (0: no slow answers among the faults).
    pub slow: Duration,
    /// Seed of every choice.
    pub seed: u64,
}

/// A plan applied: the dice and the tally.
pub struct Faults {
    plan: FaultPlan,
    dice: Mutex<StdRng>,
    tally: Mutex<BTreeMap<(String, Fault), u64>>,
}

impl Faults {
    /// Applies `plan`.
    pub fn new(plan: FaultPlan) -> Self {
        Self { plan, dice: Mutex::new(StdRng::seed_from_u64(plan.seed)), tally: Mutex::default() }
    }

    /// How late a slow answer comes.
    pub fn slow(&self) -> Duration {
        self.plan.slow
    }

    /// The fault `action`'s call gets, if any (and tallies it).
    pub fn draw(&self, action: &str) -> Option<Fault> {
        if !FAULTED_OPERATIONS.contains(&action) {
            return None;
        }
        let kinds: &[Fault] = if self.plan.slow.is_zero() {
            &[Fault::Throttle, Fault::ServerError, Fault::DroppedBefore, Fault::LostAfterCommit]
        } else {
            &[Fault::Throttle, Fault::ServerError, Fault::DroppedBefore, Fault::LostAfterCommit, Fault::Slow]
        };
        let fault = {
            let mut dice = self.dice.lock().unwrap_or_else(|p| p.into_inner());
            if !dice.random_bool(self.plan.rate.clamp(0.0, 1.0)) {
                return None;
            }
            kinds[dice.random_range(0..kinds.len())]
        };
        *self.tally.lock().unwrap_or_else(|p| p.into_inner()).entry((action.to_owned(), fault)).or_default() += 1;
        Some(fault)
    }

    /// The faults injected so far, by (operation, kind).
    pub fn tally(&self) -> BTreeMap<(String, Fault), u64> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The error answer of `fault` (a throttle or a 500), as the AWS JSON protocols spell it.
pub fn error_answer(fault: Fault) -> Option<(u16, &'static str)> {
    match fault {
        Fault::Throttle => Some((
            400,
            r#"{"__type":"ThrottlingException","message":"Rate exceeded (injected by the local fault layer)"}"#,
        )),
        Fault::ServerError => Some((
            500,
            r#"{"__type":"InternalFailure","message":"Internal failure (injected by the local fault layer)"}"#,
        )),
        Fault::DroppedBefore | Fault::LostAfterCommit | Fault::Slow => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_kept_every_kind_comes_up_and_the_dice_are_seeded() {
        let draw_all = |seed| {
            let faults = Faults::new(FaultPlan { rate: 0.1, slow: Duration::from_secs(6), seed });
            (0..10_000).map(|_| faults.draw("dynamodb:UpdateItem")).collect::<Vec<_>>()
        };
        let drawn = draw_all(7);
        let faulted = drawn.iter().flatten().count();
        assert!((800..1200).contains(&faulted), "about 10 %: {faulted}");
        for kind in [Fault::Throttle, Fault::ServerError, Fault::DroppedBefore, Fault::LostAfterCommit, Fault::Slow] {
            assert!(drawn.contains(&Some(kind)), "{kind:?}");
        }
        assert_eq!(drawn, draw_all(7), "the same seed, the same faults");
        let faults = Faults::new(FaultPlan { rate: 1.0, slow: Duration::ZERO, seed: 1 });
        assert_eq!(faults.draw("sqs:ReceiveMessage"), None, "polling is left alone");
        assert_ne!(faults.draw("sqs:SendMessage"), Some(Fault::Slow), "no slow answers without a delay");
        assert_eq!(faults.tally().values().sum::<u64>(), 1);
    }
}
