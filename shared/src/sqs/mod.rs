//! Running SQS batches: the function skeleton, the batch runner, backoff, and visibility changes.

pub mod backoff;
pub mod batch;
pub mod budget;
pub mod dead_letter;
pub mod function;
pub mod visibility;

pub use backoff::{Backoff, Jitter};
pub use batch::{BatchConfig, BatchReport, BatchRunner, Fate, Invocation, NotHandled, RecordHandler, receive_count};
pub use budget::{GiveUpReason, RetryBudget, Verdict};
pub use dead_letter::{DeadLetter, DeadLetterQueue, SqsDeadLetterQueue};
pub use function::SqsFunction;
pub use visibility::{SqsVisibility, VisibilityControl};
