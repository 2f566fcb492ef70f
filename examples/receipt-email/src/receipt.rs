//! The message: one order's receipt, to one address. Read once, at the edge of the handler.

use serde::{Deserialize, Serialize};

/// A receipt to send. The order's shop and id name it: a second message for the same order is
/// the same receipt (a redelivery, a producer's retry), never a second e-mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The shop that sold it: the idempotency scope, so two shops' order ids never collide.
    pub shop: String,
    /// The order, unique within its shop: the idempotency key.
    pub order_id: String,
    /// Where the receipt goes.
    pub to: String,
    /// The order's total as the shop prints it (`"EUR 12.50"`): text for the e-mail, not money
    /// this example computes with.
    pub total: String,
}

/// Why a message is not a receipt. Such a message is deleted, not retried: no delivery of the
/// same body can succeed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// Not the JSON of a [`Receipt`].
    #[error("not a receipt: {0}")]
    Json(#[from] serde_json::Error),
    /// A receipt without an address to send it to.
    #[error("no address: `to` must name one mailbox")]
    NoAddress,
}

impl Receipt {
    /// Parses a message body.
    pub fn parse(body: &str) -> Result<Self, ReceiptError> {
        let receipt: Self = serde_json::from_str(body)?;
        if !receipt.to.contains('@') {
            return Err(ReceiptError::NoAddress);
        }
        Ok(receipt)
    }
}
