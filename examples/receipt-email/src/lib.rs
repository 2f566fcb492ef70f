//! An idempotent "send the receipt e-mail" SQS consumer, built on `lambda-idempotency` and
//! `lambda-sqs-batch` alone: proof that neither knows anything of payments.
//!
//! A shop enqueues `{"shop", "order_id", "to", "total"}`; the function sends each receipt once,
//! however often SQS delivers the message or the shop sends it again. A bounced address is
//! stored and never retried; a mail service outage retries with jittered backoff; a message that
//! is not a receipt is dropped with a reason, never retried forever.

pub mod handler;
pub mod mailer;
pub mod receipt;

pub use handler::{ReceiptSender, SEND_RECEIPT, Sent};
pub use mailer::{LogMailer, MailError, Mailer};
pub use receipt::{Receipt, ReceiptError};
