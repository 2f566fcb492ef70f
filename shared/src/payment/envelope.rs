//! The message the intake enqueues and the processor executes: versioned, strictly parsed, and
//! carrying everything needed to execute the payment exactly once in effect.

use serde::Deserialize;

use super::card_data::redact_digit_runs;
use super::request::PaymentRequest;
use crate::idempotency::{IdempotencyKey, Scope};

/// The only schema version this code writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// One payment to execute.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentMessage {
    /// Version of this layout; anything but [`SCHEMA_VERSION`] is refused, never guessed at.
    pub schema_version: u32,
    /// The client's idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// The authenticated caller the key belongs to.
    pub scope: Scope,
    /// What to charge.
    pub payment: PaymentRequest,
    /// When the intake accepted the payment (RFC 3339, UTC).
    pub created_at: String,
    /// Ties the logs of intake, processor and DLQ consumer together.
    pub correlation_id: String,
}

/// Why a message body is not a valid payment message. Permanent: the same bytes will never parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON, or JSON of the wrong shape; `path` names the offending field.
    #[error("invalid message at {path}: {reason}")]
    Invalid {
        /// JSON path of the offending field (`.` for the whole document).
        path: String,
        /// What is wrong, with digit runs that could be card numbers redacted.
        reason: String,
    },
    /// A schema version this code does not know.
    #[error("unsupported schema_version {0} (this code reads {SCHEMA_VERSION})")]
    UnsupportedVersion(u32),
}

impl EnvelopeError {
    /// Stable code for stored failures and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid_message",
            Self::UnsupportedVersion(_) => "unsupported_schema_version",
        }
    }
}

/// A strict JSON parse reporting the path of the first offending field, with card-like digit runs
/// redacted from the reason. Shared by the intake (request bodies) and the processor (messages).
pub fn parse_strict<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, EnvelopeError> {
    let deserializer = &mut serde_json::Deserializer::from_str(body);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        // serde_json appends " at line L column C"; the path says more.
        let reason = inner.to_string();
        let reason = reason.split(" at line ").next().unwrap_or(&reason);
        EnvelopeError::Invalid { path, reason: redact_digit_runs(reason) }
    })
}

impl PaymentMessage {
    /// Parses and validates a message body.
    pub fn parse(body: &str) -> Result<Self, EnvelopeError> {
        #[derive(Deserialize)]
        struct Version {
            schema_version: Option<u32>,
        }
        // Check the version first, so a future layout is reported as such and not as a field error.
        if let Ok(Version { schema_version: Some(v) }) = serde_json::from_str::<Version>(body)
            && v != SCHEMA_VERSION
        {
            return Err(EnvelopeError::UnsupportedVersion(v));
        }
        let message: Self = parse_strict(body)?;
        if humantime::parse_rfc3339(&message.created_at).is_err() {
            return Err(EnvelopeError::Invalid {
                path: "created_at".into(),
                reason: "must be an RFC 3339 UTC time".into(),
            });
        }
        if message.correlation_id.is_empty() || message.correlation_id.len() > 128 {
            return Err(EnvelopeError::Invalid {
                path: "correlation_id".into(),
                reason: "must be 1 to 128 characters".into(),
            });
        }
        Ok(message)
    }

    /// The JSON body to enqueue.
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("a payment message always serialises")
    }
}

/// The scope and key of a message that failed to parse, when they can still be read: lets the
/// processor record the failure against the right payment instead of only as a poison message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHint {
    /// The caller's scope.
    pub scope: Scope,
    /// The idempotency key.
    pub idempotency_key: IdempotencyKey,
}

impl KeyHint {
    /// Reads `scope` and `idempotency_key` from any JSON object that has valid ones.
    pub fn find(body: &str) -> Option<Self> {
        #[derive(Deserialize)]
        struct Hint {
            scope: Scope,
            idempotency_key: IdempotencyKey,
        }
        serde_json::from_str::<Hint>(body).ok().map(|h| Self { scope: h.scope, idempotency_key: h.idempotency_key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> serde_json::Value {
        json!({
            "schema_version": 1,
            "idempotency_key": "order-42",
            "scope": "acme",
            "payment": {
                "amount": 1250, "currency": "EUR", "payment_method": "pm_card_visa",
                "merchant_reference": "order-42", "metadata": {"channel": "web"}
            },
            "created_at": "2026-11-27T10:00:00.000Z",
            "correlation_id": "c-1"
        })
    }

    fn error_of(doc: serde_json::Value) -> EnvelopeError {
        PaymentMessage::parse(&doc.to_string()).unwrap_err()
    }

    #[test]
    fn a_valid_message_round_trips() {
        let message = PaymentMessage::parse(&valid().to_string()).unwrap();
        assert_eq!(message.payment.amount.get(), 1250);
        assert_eq!(PaymentMessage::parse(&message.to_body()).unwrap(), message);
    }

    #[test]
    fn errors_name_the_offending_field() {
        let mut doc = valid();
        doc["payment"]["currency"] = json!("EUX");
        assert!(matches!(error_of(doc), EnvelopeError::Invalid { path, .. } if path == "payment.currency"));

        let mut doc = valid();
        doc["payment"]["amount"] = json!(12.5);
        assert!(matches!(error_of(doc), EnvelopeError::Invalid { path, .. } if path == "payment.amount"));

        let mut doc = valid();
        doc["payment"]["card_number"] = json!("4242424242424242");
        let err = error_of(doc);
        assert!(
            matches!(&err, EnvelopeError::Invalid { path, reason } if path == "payment.card_number" && reason.contains("unknown field")),
            "{err}"
        );

        let mut doc = valid();
        doc["created_at"] = json!("yesterday");
        assert!(matches!(error_of(doc), EnvelopeError::Invalid { path, .. } if path == "created_at"));
    }

    #[test]
    fn rejected_values_never_echo_card_numbers() {
        let mut doc = valid();
        doc["payment"]["amount"] = json!("4242424242424242");
        let err = error_of(doc);
        assert!(!err.to_string().contains("4242424242424242"), "{err}");
        let mut doc = valid();
        doc["payment"]["payment_method"] = json!("4242 4242 4242 4242");
        assert!(!error_of(doc).to_string().contains("4242 4242"));
    }

    #[test]
    fn unknown_versions_are_refused_as_such() {
        let mut doc = valid();
        doc["schema_version"] = json!(2);
        doc["new_field"] = json!(true);
        assert_eq!(error_of(doc), EnvelopeError::UnsupportedVersion(2));
    }

    #[test]
    fn keys_can_be_recovered_from_invalid_messages() {
        let mut doc = valid();
        doc["payment"] = json!("garbage");
        let hint = KeyHint::find(&doc.to_string()).unwrap();
        assert_eq!(hint.idempotency_key.as_str(), "order-42");
        assert_eq!(KeyHint::find("not json"), None);
    }
}
