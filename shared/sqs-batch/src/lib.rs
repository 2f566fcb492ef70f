//! SQS-triggered Lambda functions in a few lines: a function supplies one [`MessageHandler`]
//! (what one message comes to, as its own [`Fate`]); [`SqsFunction`] runs the batch (bounded
//! concurrency, FIFO groups in order, no start too close to the deadline, panics isolated),
//! hides each message that must come back for its own wait, answers with a partial batch
//! response, and flushes the invocation's metrics once.
//!
//! ```
//! use std::time::Duration;
//! use aws_lambda_events::sqs::SqsMessage;
//! use lambda_sqs_batch::visibility::RecordingVisibility;
//! use lambda_sqs_batch::{BatchConfig, Fate, Invocation, MessageHandler, MetricsSink, SqsFunction};
//!
//! #[derive(Debug)]
//! enum Sent { Done, Later(Duration) }
//!
//! impl Fate for Sent {
//!     fn retry_after(&self) -> Option<Duration> {
//!         match self { Sent::Later(wait) => Some(*wait), Sent::Done => None }
//!     }
//! }
//!
//! struct Receipts;
//!
//! impl MessageHandler for Receipts {
//!     type Fate = Sent;
//!     async fn handle_message(&self, message: &SqsMessage, _: &Invocation<'_>) -> Sent {
//!         match message.body.as_deref() {
//!             Some("mail service down") => Sent::Later(Duration::from_secs(30)),
//!             _ => Sent::Done,
//!         }
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! // Deployed: `SqsFunction::new(config, SqsVisibility::new(sqs_client), metrics).run(Receipts)`.
//! let function = SqsFunction::new(BatchConfig::default(), RecordingVisibility::default(), MetricsSink::new("Shop", "receipts"));
//! let message = |id: &str, body: &str| {
//!     let mut m = SqsMessage::default();
//!     (m.message_id, m.body, m.receipt_handle) = (Some(id.into()), Some(body.into()), Some(format!("rh-{id}")));
//!     m.event_source_arn = Some("arn:aws:sqs:eu-west-1:123456789012:receipts".into());
//!     m
//! };
//! let batch = [message("m1", "order 1"), message("m2", "mail service down")];
//! let report = function.process_batch(&batch, i64::MAX, "request-1", &Receipts).await;
//! let failed: Vec<_> = report.response.batch_item_failures.iter().map(|f| f.item_identifier.clone()).collect();
//! assert_eq!(failed, ["m2"], "only m2 comes back, after its own 30 s");
//! # });
//! ```

#![deny(missing_docs)]

pub mod backoff;
pub mod batch;
pub mod dead_letter;
pub mod error;
pub mod function;
pub mod visibility;

pub use backoff::{Backoff, Jitter};
pub use batch::{BatchConfig, BatchReport, BatchRunner, Fate, Invocation, MessageHandler, NotHandled, receive_count};
#[cfg(feature = "sqs")]
pub use dead_letter::SqsDeadLetterQueue;
pub use dead_letter::{DeadLetter, DeadLetterQueue};
pub use error::QueueError;
pub use function::SqsFunction;
pub use lambda_observability::{Metrics, MetricsSink};
#[cfg(feature = "sqs")]
pub use visibility::SqsVisibility;
pub use visibility::VisibilityControl;
