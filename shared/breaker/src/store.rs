//! The persistence port of the breaker: read the item, write a new version of it.

use std::future::Future;

use super::protocol::BreakerState;

/// What a write found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The new version is stored.
    Stored,
    /// Another instance wrote first: the state as it now stands (recompute from it).
    Conflict(BreakerState),
}

/// Failures of the store itself. A breaker whose store is down lets calls through (it must never
/// become the outage), so callers log these and carry on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker store: {0}")]
pub struct BreakerStoreError(pub String);

/// Where breaker items live. Every write is conditional on the version it was computed from.
pub trait BreakerStore: Send + Sync {
    /// The breaker named `name` (strongly consistent); a breaker never written reads as closed.
    fn read(&self, name: &str) -> impl Future<Output = Result<BreakerState, BreakerStoreError>> + Send;

    /// Stores `next` if the stored version is still `next.version - 1` (absent counts as 0).
    fn write(&self, name: &str, next: &BreakerState)
    -> impl Future<Output = Result<Written, BreakerStoreError>> + Send;
}
