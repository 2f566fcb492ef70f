//! The failure record and its store port.

use std::future::Future;

use crate::payment::{KeyHint, PaymentMessage};
use lambda_idempotency::{IdempotencyKey, Scope};

/// Why the message ended here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// It exhausted maxReceiveCount and reached the dead-letter queue.
    DeadLetter,
    /// It could not be parsed or validated: recorded and deleted, never retried.
    Poison,
}

impl FailureKind {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeadLetter => "DEAD_LETTER",
            Self::Poison => "POISON",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "DEAD_LETTER" => Some(Self::DeadLetter),
            "POISON" => Some(Self::Poison),
            _ => None,
        }
    }
}

/// Whether an operator still has to act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureState {
    /// Needs attention: the payment shows DEAD_LETTERED.
    Open,
    /// Closed: redriven, settled, or judged by an operator.
    Closed {
        /// When (epoch ms).
        at_ms: i64,
        /// What was done.
        note: String,
    },
}

/// One failure record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRecord {
    /// Partition key: [`failure_partition`].
    pub partition: String,
    /// Sort key: the SQS message id, so a redelivered dead message writes one record.
    pub message_id: String,
    /// The caller's scope, when the body named one.
    pub scope: Option<Scope>,
    /// The idempotency key, when the body named one.
    pub idempotency_key: Option<IdempotencyKey>,
    /// The body for people to read: card data redacted (every run of 12 or more digits, an
    /// account ID used as the scope included), at most [`MAX_STORED_BODY_BYTES`]. Never sent
    /// anywhere: see `accepted_message`.
    pub body: String,
    /// The body exactly as it arrived, kept only when it is a valid payment message (which
    /// passed the envelope's card-data checks): what a redrive sends, so that the payment is
    /// found under its own record key, provider key and payload hash.
    pub accepted_message: Option<String>,
    /// ApproximateReceiveCount when recorded.
    pub receive_count: u32,
    /// First processing attempt (epoch ms), from the idempotency record when there is one.
    pub first_attempt_at_ms: Option<i64>,
    /// Last processing attempt (epoch ms), from the idempotency record when there is one.
    pub last_attempt_at_ms: Option<i64>,
    /// The last error reason, from the idempotency record (or the parse error of a poison).
    pub last_error: Option<String>,
    /// Low-cardinality class for metrics and triage (`provider_503`, `invalid_message`, …).
    pub failure_class: String,
    /// The queue the message came from.
    pub source_queue: String,
    /// When the failure was recorded (epoch ms).
    pub recorded_at_ms: i64,
    /// Dead letter or poison.
    pub kind: FailureKind,
    /// Open or closed.
    pub state: FailureState,
    /// The latest redrive of this record, while it is open: its payment was sent again and is
    /// being processed, so the record no longer makes it show DEAD_LETTERED; the record is
    /// closed when the payment reaches a terminal state.
    pub redriven: Option<Redrive>,
}

/// An operator's redrive of a failure record: when, and as which new message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redrive {
    /// When (epoch ms).
    pub at_ms: i64,
    /// The id of the message the payment was sent again as.
    pub message_id: String,
}

/// The SQS message a failure record is about, as both writers know it: the processor (a poison
/// message) and the DLQ consumer (a dead one).
#[derive(Debug, Clone, Copy)]
pub struct FailedMessage<'a> {
    /// The id that keys the record.
    pub message_id: &'a str,
    /// The payment it names, when its body can still be read that far.
    pub hint: Option<&'a KeyHint>,
    /// The body as it arrived (stored redacted and bounded).
    pub body: &'a str,
    /// ApproximateReceiveCount.
    pub receive_count: u32,
    /// The queue it came from.
    pub source_queue: &'a str,
}

impl FailureRecord {
    /// An open record of `message`, of `kind` and class `failure_class`, recorded at `now_ms`;
    /// the attempt times and last error are the writer's to add.
    pub fn open(kind: FailureKind, message: FailedMessage<'_>, failure_class: String, now_ms: i64) -> Self {
        Self {
            partition: failure_partition(message.hint, message.message_id),
            message_id: message.message_id.to_owned(),
            scope: message.hint.map(|h| h.scope.clone()),
            idempotency_key: message.hint.map(|h| h.idempotency_key.clone()),
            body: stored_body(message.body),
            accepted_message: PaymentMessage::parse(message.body).is_ok().then(|| message.body.to_owned()),
            receive_count: message.receive_count,
            first_attempt_at_ms: None,
            last_attempt_at_ms: None,
            last_error: None,
            failure_class,
            source_queue: message.source_queue.to_owned(),
            recorded_at_ms: now_ms,
            kind,
            state: FailureState::Open,
            redriven: None,
        }
    }

    /// Whether the record still makes its payment show DEAD_LETTERED: open, and not redriven.
    pub fn holds_the_payment(&self) -> bool {
        self.state == FailureState::Open && self.redriven.is_none()
    }
}

/// Longest body a failure record keeps. Any body the intake enqueues (at most 64 KiB of request
/// plus the envelope) fits whole, so it can be redriven; a larger one is forged or corrupt and is
/// cut. DynamoDB's item limit (400 KB) is never approached.
pub const MAX_STORED_BODY_BYTES: usize = 96 * 1024;

/// Longest error text a failure record keeps (provider messages included).
pub const MAX_STORED_ERROR_BYTES: usize = 1024;

/// A message body as a failure record may keep it: card data redacted (a forged message is never
/// stored raw), at most [`MAX_STORED_BODY_BYTES`].
pub fn stored_body(body: &str) -> String {
    truncated(&crate::payment::card_data::redact_card_data(body), MAX_STORED_BODY_BYTES)
}

/// An error text as stored and logged: card data redacted, at most [`MAX_STORED_ERROR_BYTES`].
pub fn stored_error(text: &str) -> String {
    truncated(&crate::payment::card_data::redact_card_data(text), MAX_STORED_ERROR_BYTES)
}

fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…[truncated]", &text[..cut])
}

/// The partition of a payment's failure records: scope and key, `#`-separated with the scope's
/// `#` and `%` escaped (the same rule as idempotency record keys).
pub fn payment_partition(scope: &Scope, key: &IdempotencyKey) -> String {
    format!("{}#{}", scope.as_str().replace('%', "%25").replace('#', "%23"), key.as_str())
}

/// The partition of a message's failure record: its payment's, when the body names one (so the
/// payment's status finds it); otherwise one of the message's own.
pub fn failure_partition(hint: Option<&KeyHint>, message_id: &str) -> String {
    hint.map_or_else(|| format!("unparsed#{message_id}"), |h| payment_partition(&h.scope, &h.idempotency_key))
}

/// What writing a record found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Written now.
    New,
    /// A record for this message already existed (a redelivered dead message): nothing written.
    AlreadyRecorded,
}

/// Failures of the failure store.
#[derive(Debug, thiserror::Error)]
pub enum FailureStoreError {
    /// Worth retrying.
    #[error("failure store temporarily unavailable: {0}")]
    Transient(String),
    /// Not worth retrying.
    #[error("failure store rejected the request: {0}")]
    Permanent(String),
    /// A stored record this code cannot read.
    #[error("malformed failure record {partition}/{message_id}: {reason}")]
    Malformed {
        /// Partition key.
        partition: String,
        /// Sort key.
        message_id: String,
        /// What is wrong.
        reason: String,
    },
}

/// Persistence of failure records.
pub trait FailureStore: Send + Sync {
    /// Writes `record` unless one exists for its (partition, message id).
    fn record(&self, record: &FailureRecord) -> impl Future<Output = Result<Recorded, FailureStoreError>> + Send;

    /// Every record of one payment (open and closed).
    fn for_payment(
        &self,
        scope: &Scope,
        key: &IdempotencyKey,
    ) -> impl Future<Output = Result<Vec<FailureRecord>, FailureStoreError>> + Send;

    /// One record.
    fn get(
        &self,
        partition: &str,
        message_id: &str,
    ) -> impl Future<Output = Result<Option<FailureRecord>, FailureStoreError>> + Send;

    /// Every record, optionally only the open ones (an operator's listing; scans the table).
    fn list(&self, open_only: bool) -> impl Future<Output = Result<Vec<FailureRecord>, FailureStoreError>> + Send;

    /// Notes that an open record's payment was redriven (it stays open until the payment
    /// settles); `false` if it was not open.
    fn note_redrive(
        &self,
        partition: &str,
        message_id: &str,
        redrive: &Redrive,
    ) -> impl Future<Output = Result<bool, FailureStoreError>> + Send;

    /// Closes an open record; `false` if it was not open.
    fn close(
        &self,
        partition: &str,
        message_id: &str,
        note: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, FailureStoreError>> + Send;
}
