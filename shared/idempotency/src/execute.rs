//! Making any async operation idempotent in one call: [`Idempotency::execute`] claims the key,
//! runs the operation only if nobody ran it before, stores its result (or its permanent failure)
//! and replays that to every duplicate. What Powertools' `@idempotent` does, plus what it lacks:
//! the completion is fenced by the claim's owner token (a worker whose lease was taken over
//! cannot overwrite the new owner's record), permanent failures are stored and replayed, and the
//! lease ends with the caller's deadline.

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::guard::Idempotency;
use crate::hash::{HashError, PayloadHash};
use crate::key::RecordKey;
use crate::protocol::{RecordStatus, StoredFailure};
use crate::store::{ClaimOutcome, IdempotencyStore, Lease, Settlement, StoreError};

/// What an operation run through [`Idempotency::execute`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Executed<T> {
    /// The operation ran now, and its result is stored.
    Fresh(T),
    /// The operation ran before: its stored result, and the operation did not run.
    Replayed(T),
}

impl<T> Executed<T> {
    /// The result, whether the operation ran now or before: for callers to whom a duplicate is
    /// simply a success.
    pub fn into_inner(self) -> T {
        match self {
            Self::Fresh(value) | Self::Replayed(value) => value,
        }
    }
}

/// How an operation run through [`Idempotency::execute`] may fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationError<E> {
    /// For good (a declined card, an invalid request): stored, and replayed to every duplicate
    /// as [`ExecuteError::Failed`]; never run again.
    Permanent(StoredFailure),
    /// For now (a timeout, a 503): the claim is released, so the next attempt runs at once. If
    /// the operation may have taken effect, it must itself be idempotent downstream (pass the
    /// key on, as the payments here pass it to the provider).
    Retryable(E),
}

/// Why [`Idempotency::execute`] returned no result.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E> {
    /// The operation failed for good, now or on an earlier attempt.
    #[error("the operation failed for good: {} ({})", .0.code, .0.detail)]
    Failed(StoredFailure),
    /// The operation failed and may be retried (the claim was released).
    #[error("the operation failed and may be retried")]
    Retryable(E),
    /// Another attempt holds the key now; retry after its lease ends.
    #[error("another attempt holds this key until {lease_until_ms} (epoch ms)")]
    InProgress {
        /// When that attempt's lease ends (epoch ms).
        lease_until_ms: i64,
    },
    /// The key was used before with another input: a caller's error, never retried.
    #[error("this key was used before with another input")]
    PayloadMismatch,
    /// This attempt's lease lapsed and another attempt took the key over before the result was
    /// stored: the result is not recorded; retry (the new owner's outcome then answers).
    #[error("the lease lapsed before the result was stored")]
    LeaseLost,
    /// The input or the result could not be serialised, or a stored result read back.
    #[error("input or result not (de)serialisable: {0}")]
    Serialization(String),
    /// The store failed; whether the operation ran is unknown to this call (retry).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<E> From<HashError> for ExecuteError<E> {
    fn from(error: HashError) -> Self {
        Self::Serialization(error.to_string())
    }
}

impl<S: IdempotencyStore> Idempotency<S> {
    /// Runs `operation` once in effect for `key`: claims it for `input` (compared by the hash of
    /// its canonical JSON, so a key reused with another input is refused) until `deadline_ms`
    /// (a Lambda passes its invocation's deadline), runs the operation with the lease, and
    /// stores what it returns; a duplicate gets the stored result back without running it.
    pub async fn execute<I, T, E, F, Fut>(
        &self,
        key: &RecordKey,
        input: &I,
        deadline_ms: i64,
        operation: F,
    ) -> Result<Executed<T>, ExecuteError<E>>
    where
        I: Serialize + ?Sized,
        T: Serialize + DeserializeOwned,
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = Result<T, OperationError<E>>>,
    {
        let hash = PayloadHash::of(input)?;
        let lease = match self.claim(key, &hash, deadline_ms).await? {
            ClaimOutcome::Claimed(lease) => lease,
            ClaimOutcome::AlreadyCompleted { result } => return replayed(&result),
            ClaimOutcome::AlreadyFailed(failure) => return Err(ExecuteError::Failed(failure)),
            ClaimOutcome::InProgressElsewhere { lease_until_ms } => {
                return Err(ExecuteError::InProgress { lease_until_ms });
            }
            ClaimOutcome::PayloadMismatch => return Err(ExecuteError::PayloadMismatch),
        };
        match operation(lease.clone()).await {
            Ok(value) => {
                let stored = serde_json::to_value(&value).map_err(|e| ExecuteError::Serialization(e.to_string()))?;
                match self.complete(&lease, &stored).await? {
                    Settlement::Recorded => Ok(Executed::Fresh(value)),
                    Settlement::NotOwner { current } => settled_meanwhile(current.as_deref()),
                }
            }
            Err(OperationError::Permanent(failure)) => match self.fail_permanently(&lease, failure.clone()).await? {
                Settlement::Recorded => Err(ExecuteError::Failed(failure)),
                Settlement::NotOwner { current } => settled_meanwhile(current.as_deref()),
            },
            Err(OperationError::Retryable(error)) => {
                // Released at once; should that fail, the lease ends by itself.
                let _ = self.release(&lease, "retryable").await;
                Err(ExecuteError::Retryable(error))
            }
        }
    }
}

fn replayed<T: DeserializeOwned, E>(stored: &str) -> Result<Executed<T>, ExecuteError<E>> {
    serde_json::from_str(stored).map(Executed::Replayed).map_err(|e| ExecuteError::Serialization(e.to_string()))
}

/// A settlement refused because the lease was taken over: the new owner's outcome, if it settled.
fn settled_meanwhile<T: DeserializeOwned, E>(
    current: Option<&crate::protocol::IdempotencyRecord>,
) -> Result<Executed<T>, ExecuteError<E>> {
    match current {
        Some(r) if r.status == RecordStatus::Completed => replayed(r.result.as_deref().unwrap_or("null")),
        Some(r) if r.status == RecordStatus::Failed => match &r.failure {
            Some(failure) => Err(ExecuteError::Failed(failure.clone())),
            None => Err(ExecuteError::LeaseLost),
        },
        _ => Err(ExecuteError::LeaseLost),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::IdempotencyConfig;
    use crate::key::{IdempotencyKey, Operation, Scope};
    use crate::memory::InMemoryStore;
    use lambda_support::clock::ManualClock;

    fn key() -> RecordKey {
        RecordKey::new(
            Operation::new("send").unwrap(),
            Scope::new("shop").unwrap(),
            IdempotencyKey::new("o-1").unwrap(),
        )
    }

    #[tokio::test]
    async fn an_operation_runs_once_and_duplicates_get_its_result() {
        let clock = ManualClock::at(0);
        let guard = Idempotency::with_clock(InMemoryStore::new(), IdempotencyConfig::default(), Arc::new(clock));
        let runs = AtomicU32::new(0);
        let run = || async {
            runs.fetch_add(1, Ordering::Relaxed);
            Ok::<_, OperationError<()>>("sent".to_owned())
        };
        let first = guard.execute(&key(), "receipt for o-1", 60_000, |_| run()).await.unwrap();
        let second = guard.execute(&key(), "receipt for o-1", 60_000, |_| run()).await.unwrap();
        assert_eq!((first, second), (Executed::Fresh("sent".into()), Executed::Replayed("sent".into())));
        assert_eq!(runs.load(Ordering::Relaxed), 1);
        let other = guard.execute(&key(), "another receipt", 60_000, |_| run()).await;
        assert!(matches!(other, Err(ExecuteError::PayloadMismatch)), "{other:?}");
    }

    #[tokio::test]
    async fn a_permanent_failure_is_stored_and_a_retryable_one_frees_the_key() {
        let guard = Idempotency::new(InMemoryStore::new(), IdempotencyConfig::default());
        let failure = StoredFailure { code: "bounced".into(), detail: "no such mailbox".into() };
        let failed = guard
            .execute(&key(), "r", i64::MAX, |_| async {
                Err::<(), _>(OperationError::<()>::Permanent(failure.clone()))
            })
            .await;
        assert!(matches!(failed, Err(ExecuteError::Failed(ref f)) if *f == failure));
        let again = guard.execute(&key(), "r", i64::MAX, |_| async { Ok::<_, OperationError<()>>(()) }).await;
        assert!(matches!(again, Err(ExecuteError::Failed(_))), "replayed, not run: {again:?}");

        let other = RecordKey::new(
            Operation::new("send").unwrap(),
            Scope::new("shop").unwrap(),
            IdempotencyKey::new("o-2").unwrap(),
        );
        let retry =
            guard.execute(&other, "r", i64::MAX, |_| async { Err::<(), _>(OperationError::Retryable("503")) }).await;
        assert!(matches!(retry, Err(ExecuteError::Retryable("503"))));
        let later = guard.execute(&other, "r", i64::MAX, |_| async { Ok::<_, OperationError<()>>(7) }).await.unwrap();
        assert_eq!(later, Executed::Fresh(7), "released: the next attempt runs at once");
    }
}
