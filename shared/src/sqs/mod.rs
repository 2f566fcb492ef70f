//! Running SQS batches: the batch runner, backoff, and visibility changes.

pub mod backoff;
pub mod batch;
pub mod budget;
pub mod dead_letter;
pub mod visibility;

pub use backoff::{Backoff, Jitter};
pub use batch::{BatchConfig, BatchReport, BatchRunner, RecordHandler, RecordOutcome, RecordResult, receive_count};
pub use budget::{GiveUpReason, RetryBudget, Verdict};
pub use dead_letter::{DeadLetter, DeadLetterQueue, SqsDeadLetterQueue};
pub use visibility::{SqsVisibility, VisibilityControl};
