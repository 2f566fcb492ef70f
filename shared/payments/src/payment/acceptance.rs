//! What the intake answers when it accepts a payment, built from the message it enqueues: the
//! intake and the completer (which enqueues on the intake's behalf when the intake never
//! finished) store the same answer, so a client's later retry gets the same `202` either way.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use super::envelope::PaymentMessage;
use super::status::PaymentStatus;
use lambda_idempotency::IdempotencyKey;

/// Characters left as they are in a key inside a URL path (RFC 3986 unreserved).
const KEY_IN_PATH: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// The payment's status URL path, with the key percent-encoded.
pub fn status_path(key: &IdempotencyKey) -> String {
    format!("/payments/{}", utf8_percent_encode(key.as_str(), KEY_IN_PATH))
}

/// The `202 Accepted` body for `message`, as stored in the intake record and replayed.
pub fn acceptance(message: &PaymentMessage) -> Value {
    json!({
        "idempotency_key": message.idempotency_key.as_str(),
        "status": PaymentStatus::Received,
        "accepted_at": message.created_at,
        "status_url": status_path(&message.idempotency_key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_with_reserved_characters_are_encoded_in_the_status_path() {
        let key = IdempotencyKey::new("order 7/a?b").unwrap();
        assert_eq!(status_path(&key), "/payments/order%207%2Fa%3Fb");
    }
}
