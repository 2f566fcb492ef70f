//! Idempotent execution for AWS Lambda: an operation runs once in effect per key, however often
//! its trigger is delivered, retried or replayed.
//!
//! One record per (operation, scope, key). An attempt **claims** the record before the work and
//! **settles** it after: completes it with the result, fails it for good, or releases it after a
//! retryable failure. Every write is one conditional request, and every settlement requires the
//! claim's owner token, so an attempt whose lease lapsed cannot overwrite the attempt that took
//! over. The rules are pure functions in [`protocol`]; the stores ([`dynamodb`], [`memory`])
//! apply them, and the [`conformance`] kit (feature `conformance`) checks that a store does.
//!
//! The one-call form, [`Idempotency::execute`], is what Powertools' `@idempotent` is for Python
//! (key from the input, payload validation, the stored result on a duplicate, in-progress
//! handling, expiry) with what it lacks: fenced completion, stored permanent failures, leases
//! that end with the invocation's deadline, and recovery of work left in progress.
//!
//! ```
//! use lambda_idempotency::{Executed, Idempotency, IdempotencyConfig, OperationError, RecordKey};
//! use lambda_idempotency::memory::InMemoryStore;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let guard = Idempotency::new(InMemoryStore::new(), IdempotencyConfig::default());
//! let key = RecordKey::parse("send-receipt", "shop-1", "order-42").unwrap();
//! let send = |_lease| async { Ok::<_, OperationError<String>>("message-id-1".to_owned()) };
//!
//! let first = guard.execute(&key, "receipt for order 42", i64::MAX, send).await.unwrap();
//! let again = guard.execute(&key, "receipt for order 42", i64::MAX, send).await.unwrap();
//! assert_eq!(first, Executed::Fresh("message-id-1".to_owned()));
//! assert_eq!(again, Executed::Replayed("message-id-1".to_owned()), "sent once");
//! # });
//! ```
//!
//! Features: `dynamodb` (default) for [`dynamodb::DynamoDbStore`]; `batching` for one request
//! per batch of concurrent claims and of settlements; `conformance` for the kit.

#![deny(missing_docs)]

#[cfg(feature = "batching")]
pub mod batching;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
pub mod execute;
pub mod guard;
pub mod hash;
pub mod key;
pub mod memory;
pub mod protocol;
pub mod store;

pub use execute::{ExecuteError, Executed, OperationError};
pub use guard::{Idempotency, IdempotencyConfig};
pub use hash::{HashError, PayloadHash};
pub use key::{IdempotencyKey, KeyError, Operation, RecordKey, Scope};
pub use protocol::{IdempotencyRecord, OwnerToken, RecordStatus, Recovery, StoredFailure};
pub use store::{ClaimOutcome, IdempotencyStore, Lease, Settlement, StoreError};
