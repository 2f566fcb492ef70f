//! The payments queue port: how the intake hands a payment to the processor.

use std::future::Future;
use std::sync::{Arc, Mutex};

use super::envelope::PaymentMessage;
use crate::aws::errors::classify;

/// Why a message could not be enqueued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not enqueue the payment: {detail}")]
pub struct EnqueueError {
    /// Whether trying again may succeed.
    pub retryable: bool,
    /// What happened.
    pub detail: String,
}

/// Where accepted payments go.
pub trait PaymentQueue: Send + Sync {
    /// Enqueues one payment message.
    fn enqueue(&self, message: &PaymentMessage) -> impl Future<Output = Result<(), EnqueueError>> + Send;
}

/// SendMessage to an SQS queue. On a FIFO queue the caller's scope is the message group and the
/// provider key the deduplication id.
#[derive(Debug, Clone)]
pub struct SqsPaymentQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsPaymentQueue {
    /// Sends to `queue_url`.
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self { client, queue_url: queue_url.into() }
    }
}

impl PaymentQueue for SqsPaymentQueue {
    async fn enqueue(&self, message: &PaymentMessage) -> Result<(), EnqueueError> {
        let mut send = self.client.send_message().queue_url(&self.queue_url).message_body(message.to_body());
        if self.queue_url.ends_with(".fifo") {
            send = send
                .message_group_id(message.scope.as_str())
                .message_deduplication_id(super::provider_idempotency_key(&message.scope, &message.idempotency_key));
        }
        send.send().await.map(|_| ()).map_err(|e| {
            let judged = classify(&e);
            EnqueueError { retryable: judged.retryable, detail: judged.description }
        })
    }
}

/// Keeps messages in memory (or fails on demand): for unit tests of the intake.
#[derive(Debug, Clone, Default)]
pub struct InMemoryPaymentQueue {
    sent: Arc<Mutex<Vec<PaymentMessage>>>,
    failing: Arc<Mutex<Option<EnqueueError>>>,
}

impl InMemoryPaymentQueue {
    /// Everything enqueued so far.
    pub fn sent(&self) -> Vec<PaymentMessage> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes every later enqueue fail with `error` (or succeed again with `None`).
    pub fn fail_with(&self, error: Option<EnqueueError>) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }
}

impl PaymentQueue for InMemoryPaymentQueue {
    async fn enqueue(&self, message: &PaymentMessage) -> Result<(), EnqueueError> {
        if let Some(error) = self.failing.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(error);
        }
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).push(message.clone());
        Ok(())
    }
}
