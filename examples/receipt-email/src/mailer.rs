//! The port to whatever sends e-mail (SES, an SMTP relay, a provider's API), and a stand-in that
//! logs instead of sending.

use std::future::Future;

use crate::receipt::Receipt;

/// How a send can fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    /// The address does not exist or refuses mail: sending again will not help.
    #[error("bounced: {0}")]
    Bounced(String),
    /// The mail service is throttling or down: try again later.
    #[error("mail service unavailable: {0}")]
    Unavailable(String),
}

/// Sends one receipt. `idempotency_key` is the same for every attempt at the same receipt: a
/// mail service that takes one (as many transactional e-mail APIs do) drops the second copy
/// when an attempt sent it and crashed before the result was stored.
pub trait Mailer: Send + Sync {
    /// Sends `receipt`; the service's message id.
    fn send(&self, receipt: &Receipt, idempotency_key: &str) -> impl Future<Output = Result<String, MailError>> + Send;
}

/// Logs the receipt instead of sending it: what the example's deployed function runs until a
/// real mail service is wired in.
#[derive(Debug, Clone, Default)]
pub struct LogMailer;

impl Mailer for LogMailer {
    async fn send(&self, receipt: &Receipt, idempotency_key: &str) -> Result<String, MailError> {
        tracing::info!(shop = receipt.shop, order_id = receipt.order_id, idempotency_key, "receipt sent (logged)");
        Ok(format!("logged-{idempotency_key}"))
    }
}
