//! Failure records: one per dead-lettered or poison message, so every payment that could not be
//! executed is visible and actionable instead of silently lost.

pub mod dynamodb;
pub mod memory;
pub mod record;
pub mod redrive;

pub use record::{
    FailureKind, FailureRecord, FailureState, FailureStore, FailureStoreError, Recorded, failure_partition,
    payment_partition,
};
