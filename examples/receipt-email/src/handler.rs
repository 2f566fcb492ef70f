//! The rule: each receipt is sent once, however often its message is delivered. Everything else
//! (claiming, storing the result, replaying it to duplicates, the partial batch response,
//! backoff) is the libraries'.

use std::time::Duration;

use aws_lambda_events::sqs::SqsMessage;
use lambda_idempotency::{
    ExecuteError, Executed, Idempotency, IdempotencyStore, OperationError, RecordKey, StoredFailure,
};
use lambda_sqs_batch::{Backoff, Fate, Invocation, Jitter, MessageHandler, receive_count};

use crate::mailer::{MailError, Mailer};
use crate::receipt::Receipt;

/// The operation the idempotency records guard.
pub const SEND_RECEIPT: &str = "send-receipt";

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Sent now; the mail service's message id.
    Now(String),
    /// Sent before (a redelivery or a duplicate message): not sent again.
    Before(String),
    /// The address refused it, now or before: recorded, not retried.
    Bounced(String),
    /// Not a receipt, or a receipt reusing an order id with other content: deleted, not retried.
    Refused(String),
    /// Try again after this wait (the mail service or the store failed, or another delivery of
    /// the same receipt is sending it now).
    Later(Duration),
}

impl Fate for Sent {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Later(wait) => Some(*wait),
            _ => None,
        }
    }
}

/// Sends receipts through `M`, once each, with records in `S`.
pub struct ReceiptSender<S, M> {
    idempotency: Idempotency<S>,
    mailer: M,
    backoff: Backoff,
    jitter: Jitter,
}

impl<S: IdempotencyStore, M: Mailer> ReceiptSender<S, M> {
    /// A sender whose failed deliveries come back after a jittered wait drawn from `backoff`.
    pub fn new(idempotency: Idempotency<S>, mailer: M, backoff: Backoff) -> Self {
        Self { idempotency, mailer, backoff, jitter: Jitter::from_os() }
    }

    /// The records (tests read them).
    pub fn idempotency(&self) -> &Idempotency<S> {
        &self.idempotency
    }

    fn later(&self, message: &SqsMessage) -> Sent {
        Sent::Later(self.jitter.delay(&self.backoff, receive_count(message).unwrap_or(1)).max(Duration::from_secs(1)))
    }
}

impl<S: IdempotencyStore, M: Mailer> MessageHandler for ReceiptSender<S, M> {
    type Fate = Sent;

    async fn handle_message(&self, message: &SqsMessage, invocation: &Invocation<'_>) -> Sent {
        let receipt = match Receipt::parse(message.body.as_deref().unwrap_or_default()) {
            Ok(receipt) => receipt,
            Err(e) => return Sent::Refused(e.to_string()),
        };
        let key = match RecordKey::parse(SEND_RECEIPT, &receipt.shop, &receipt.order_id) {
            Ok(key) => key,
            Err(e) => return Sent::Refused(e.to_string()),
        };
        let send = |_lease| async {
            self.mailer.send(&receipt, &key.partition_key()).await.map_err(|e| match e {
                MailError::Bounced(why) => {
                    OperationError::Permanent(StoredFailure { code: "bounced".into(), detail: why })
                }
                MailError::Unavailable(why) => OperationError::Retryable(why),
            })
        };
        match self.idempotency.execute(&key, &receipt, invocation.deadline_ms(), send).await {
            Ok(Executed::Fresh(id)) => Sent::Now(id),
            Ok(Executed::Replayed(id)) => Sent::Before(id),
            Err(ExecuteError::Failed(failure)) => Sent::Bounced(failure.detail),
            Err(ExecuteError::PayloadMismatch) => {
                Sent::Refused("this order's receipt was sent with other content".into())
            }
            Err(ExecuteError::Serialization(why)) => Sent::Refused(why),
            Err(ExecuteError::InProgress { lease_until_ms }) => {
                let left = lease_until_ms.saturating_sub(self.idempotency.now_ms()).max(1000);
                Sent::Later(Duration::from_millis(u64::try_from(left).unwrap_or(1000)))
            }
            Err(ExecuteError::Retryable(_) | ExecuteError::LeaseLost | ExecuteError::Store(_)) => self.later(message),
        }
    }
}
