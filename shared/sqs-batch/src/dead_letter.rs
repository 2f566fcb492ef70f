//! Dead-lettering a message from the function itself: the port, the SQS adapter (SendMessage to
//! the dead-letter queue, with the failure's context as message attributes) and a recording
//! adapter for unit tests.
//!
//! The processor dead-letters a payment when its retry budget or its age runs out, instead of
//! waiting for `maxReceiveCount`: deliveries that never reached the provider (circuit open,
//! another worker holding the claim) must not count, and only the function knows which did.

use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::error::QueueError;

/// Message attribute: the id of the message that was dead-lettered (the failure message's key,
/// so that a dead-lettering repeated after a crash writes one message).
pub const SOURCE_MESSAGE_ID: &str = "SourceMessageId";
/// Message attribute: why the function dead-lettered it (`budget_exhausted`, `max_age_exceeded`).
pub const DEAD_LETTER_REASON: &str = "DeadLetterReason";
/// Message attribute: the queue the message came from.
pub const SOURCE_QUEUE: &str = "SourceQueue";
/// Message attribute: what the function found when it asked the downstream service about the
/// message's outcome before giving up (`not_charged` for the processor).
pub const RESOLUTION: &str = "Resolution";

/// One message to dead-letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The original body, unchanged (a redrive re-sends it).
    pub body: String,
    /// The original message id.
    pub source_message_id: String,
    /// The queue it came from (ARN).
    pub source_queue: String,
    /// Why: a short snake_case code.
    pub reason: String,
    /// What asking the downstream service found (`not_charged`).
    pub resolution: String,
}

/// Where a function sends the messages it gives up on.
pub trait DeadLetterQueue: Send + Sync {
    /// Sends `letter`; on error the caller keeps the original message for a retry.
    fn send(&self, letter: &DeadLetter) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// SendMessage to the dead-letter queue.
#[cfg(feature = "sqs")]
#[derive(Debug, Clone)]
pub struct SqsDeadLetterQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

#[cfg(feature = "sqs")]
impl SqsDeadLetterQueue {
    /// Sends to `queue_url` (the function's own dead-letter queue, not the source queue's
    /// redrive target).
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self { client, queue_url: queue_url.into() }
    }
}

#[cfg(feature = "sqs")]
fn text(value: &str) -> Result<aws_sdk_sqs::types::MessageAttributeValue, QueueError> {
    aws_sdk_sqs::types::MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| QueueError::Refused(e.to_string()))
}

#[cfg(feature = "sqs")]
impl DeadLetterQueue for SqsDeadLetterQueue {
    async fn send(&self, letter: &DeadLetter) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(&letter.body)
            .message_attributes(SOURCE_MESSAGE_ID, text(&letter.source_message_id)?)
            .message_attributes(DEAD_LETTER_REASON, text(&letter.reason)?)
            .message_attributes(SOURCE_QUEUE, text(&letter.source_queue)?)
            .message_attributes(RESOLUTION, text(&letter.resolution)?)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| QueueError::from_sdk(&e))
    }
}

/// Messages letters instead of sending them (or fails on demand): for unit tests.
#[derive(Debug, Clone, Default)]
pub struct RecordingDeadLetterQueue {
    sent: Arc<Mutex<Vec<DeadLetter>>>,
    failing: Arc<Mutex<bool>>,
}

impl RecordingDeadLetterQueue {
    /// Every letter sent so far.
    pub fn sent(&self) -> Vec<DeadLetter> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes every later send fail (or succeed again).
    pub fn fail(&self, failing: bool) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = failing;
    }
}

impl DeadLetterQueue for RecordingDeadLetterQueue {
    async fn send(&self, letter: &DeadLetter) -> Result<(), QueueError> {
        if *self.failing.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(QueueError::Transient("dead-letter queue unavailable (test)".into()));
        }
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).push(letter.clone());
        Ok(())
    }
}
