//! The payments queue port: how the intake hands a payment to the processor.

use std::future::Future;
use std::sync::{Arc, Mutex};

use super::envelope::PaymentMessage;
use aws_sdk_sqs::types::MessageAttributeValue;

use lambda_support::aws::errors::classify;

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

    /// Enqueues an accepted payment again on an operator's redrive, carrying the `grant` as
    /// message attributes; returns the new message's id.
    fn redrive(
        &self,
        message: &PaymentMessage,
        grant: &RedriveGrant,
    ) -> impl Future<Output = Result<String, EnqueueError>> + Send;
}

/// Message attribute: when an operator redrove the payment (epoch ms).
pub const REDRIVEN_AT: &str = "RedrivenAt";
/// Message attribute: the provider attempts the payment had spent before the redrive.
pub const ATTEMPTS_BEFORE_REDRIVE: &str = "AttemptsBeforeRedrive";

/// What an operator's redrive gives a payment that was dead-lettered: a fresh retry budget. Its
/// attempts count from the ones spent before the redrive, and its age from the redrive, so that a
/// payment given up for its budget or its age is tried again rather than given up at once. Safe,
/// because a redrive asks the provider first and re-sends only a payment it did not charge (or,
/// unknown, one still inside the provider's key window). It travels as message attributes, never
/// in the body: the body stays exactly what the intake accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedriveGrant {
    /// When the operator redrove it (epoch ms).
    pub redriven_at_ms: i64,
    /// Provider attempts spent before the redrive (the processor record's `attempts`).
    pub attempts_before: u32,
}

impl RedriveGrant {
    /// The grant a delivery carries, if it is a redrive: both attributes, as numbers.
    pub fn from_attributes(read: impl Fn(&str) -> Option<String>) -> Option<Self> {
        Some(Self {
            redriven_at_ms: read(REDRIVEN_AT)?.parse().ok()?,
            attempts_before: read(ATTEMPTS_BEFORE_REDRIVE)?.parse().ok()?,
        })
    }

    /// The attributes that carry it, by name.
    pub fn attributes(&self) -> [(&'static str, String); 2] {
        [(REDRIVEN_AT, self.redriven_at_ms.to_string()), (ATTEMPTS_BEFORE_REDRIVE, self.attempts_before.to_string())]
    }
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

impl SqsPaymentQueue {
    /// SendMessage of `message` with `attributes`; the new message's id.
    async fn send(&self, message: &PaymentMessage, attributes: &[(&str, String)]) -> Result<String, EnqueueError> {
        let mut send = self.client.send_message().queue_url(&self.queue_url).message_body(message.to_body());
        if self.queue_url.ends_with(".fifo") {
            send = send
                .message_group_id(message.scope.as_str())
                .message_deduplication_id(super::provider_idempotency_key(&message.scope, &message.idempotency_key));
        }
        for (name, value) in attributes {
            let value = MessageAttributeValue::builder().data_type("Number").string_value(value).build();
            send = send.message_attributes(
                *name,
                value.map_err(|e| EnqueueError { retryable: false, detail: e.to_string() })?,
            );
        }
        let sent = send.send().await.map_err(|e| {
            let judged = classify(&e);
            EnqueueError { retryable: judged.retryable, detail: judged.description }
        })?;
        Ok(sent.message_id().unwrap_or_default().to_owned())
    }
}

impl PaymentQueue for SqsPaymentQueue {
    async fn enqueue(&self, message: &PaymentMessage) -> Result<(), EnqueueError> {
        self.send(message, &[]).await.map(|_| ())
    }

    async fn redrive(&self, message: &PaymentMessage, grant: &RedriveGrant) -> Result<String, EnqueueError> {
        self.send(message, &grant.attributes()).await
    }
}

/// A message as the in-memory queue keeps it: with its grant when it was a redrive.
type Sent = (PaymentMessage, Option<RedriveGrant>);

/// Keeps messages in memory (or fails on demand): for unit tests of the intake.
#[derive(Debug, Clone, Default)]
pub struct InMemoryPaymentQueue {
    sent: Arc<Mutex<Vec<Sent>>>,
    failing: Arc<Mutex<Option<EnqueueError>>>,
}

impl InMemoryPaymentQueue {
    /// Everything enqueued so far.
    pub fn sent(&self) -> Vec<PaymentMessage> {
        self.sent_with_grants().into_iter().map(|(message, _)| message).collect()
    }

    /// Everything enqueued so far, with the grant of each redriven one.
    pub fn sent_with_grants(&self) -> Vec<Sent> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn push(&self, message: &PaymentMessage, grant: Option<RedriveGrant>) -> Result<usize, EnqueueError> {
        if let Some(error) = self.failing.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(error);
        }
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.push((message.clone(), grant));
        Ok(sent.len())
    }

    /// Makes every later enqueue fail with `error` (or succeed again with `None`).
    pub fn fail_with(&self, error: Option<EnqueueError>) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }
}

impl PaymentQueue for InMemoryPaymentQueue {
    async fn enqueue(&self, message: &PaymentMessage) -> Result<(), EnqueueError> {
        self.push(message, None).map(|_| ())
    }

    async fn redrive(&self, message: &PaymentMessage, grant: &RedriveGrant) -> Result<String, EnqueueError> {
        self.push(message, Some(*grant)).map(|n| format!("in-memory-{n}"))
    }
}
