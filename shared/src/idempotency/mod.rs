//! Idempotent execution of any operation named by the caller, backed by DynamoDB.
//!
//! One record per (operation, scope, key). A worker claims the record before the work and settles
//! it after (complete, fail permanently, or release after a retryable failure); every write is a
//! single conditional request, and every settlement requires the claim's owner token. See
//! [`protocol`] for the rules and the README's design section for the state machine.

pub mod dynamodb;
pub mod guard;
pub mod hash;
pub mod key;
pub mod memory;
pub mod protocol;
pub mod store;

pub use guard::{Idempotency, IdempotencyConfig};
pub use hash::{HashError, PayloadHash};
pub use key::{IdempotencyKey, KeyError, Operation, RecordKey, Scope};
pub use protocol::{IdempotencyRecord, OwnerToken, RecordStatus, Recovery, StoredFailure};
pub use store::{ClaimOutcome, IdempotencyStore, Lease, Settlement, StoreError};
