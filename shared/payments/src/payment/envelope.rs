//! The message the intake enqueues and the processor executes: versioned, strictly parsed, and
//! carrying everything needed to execute the payment exactly once in effect.

use serde::Deserialize;

use super::card_data::{contains_card_number, is_forbidden_char, redact_card_data};
use super::request::PaymentRequest;
use lambda_idempotency::{IdempotencyKey, Scope};

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

/// A strict JSON parse reporting the path of the first offending field. Nothing of the input is
/// quoted back: the path goes through [`safe_path`], and serde's messages (which quote offending
/// values and unknown field names) are reworded by [`own_wording`]. Shared by the intake (request
/// bodies) and the processor (messages).
pub fn parse_strict<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, EnvelopeError> {
    // No object may name a member twice (I-JSON): structs refuse it by their derive, metadata by
    // its own `Deserialize`, in this one pass.
    let deserializer = &mut serde_json::Deserializer::from_str(body);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = safe_path(&err.path().to_string());
        EnvelopeError::Invalid { path, reason: own_wording(&err.into_inner().to_string()) }
    })
}

/// A JSON path fit to show: card data redacted, control/bidi/zero-width characters replaced,
/// at most 100 characters (a path can hold a client's map keys).
pub fn safe_path(path: &str) -> String {
    let cleaned: String = redact_card_data(path).chars().map(|c| if is_forbidden_char(c) { '?' } else { c }).collect();
    match cleaned.char_indices().nth(100) {
        Some((cut, _)) => format!("{}…", &cleaned[..cut]),
        None => cleaned,
    }
}

/// serde's message in the project's words, without the quoted input serde puts in some of them
/// (`invalid type: string "4242…", expected u64`; ``unknown field `4242…` ``). The names and
/// types after "expected" are the project's own.
pub fn own_wording(message: &str) -> String {
    // serde_json appends " at line L column C"; the path says more.
    let message = message.split(" at line ").next().unwrap_or(message);
    let expected = message.split_once(", expected ").map(|(_, e)| e);
    let worded = if message.starts_with("unknown field") {
        format!("unknown field, expected {}", expected.unwrap_or("none"))
    } else if message.starts_with("invalid type") {
        format!("wrong type, expected {}", expected.unwrap_or("another type"))
    } else if message.starts_with("invalid value") {
        format!("invalid value, expected {}", expected.unwrap_or("another value"))
    } else if message.starts_with("invalid length") {
        format!("wrong number of elements, expected {}", expected.unwrap_or("another number"))
    } else if message.starts_with("unknown variant") {
        format!("unknown value, expected {}", expected.unwrap_or("another value"))
    } else {
        // Syntax errors and the project's own field errors quote nothing.
        message.to_owned()
    };
    redact_card_data(&worded).chars().filter(|c| !is_forbidden_char(*c)).collect()
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
        // The scope is left out on purpose: it is the authorizer's identity, written by the
        // intake, and an AWS account ID passes the Luhn check one time in ten (see the intake's
        // `identity` module). Its shape is checked by `Scope` itself.
        for (path, text) in
            [("idempotency_key", message.idempotency_key.as_str()), ("correlation_id", message.correlation_id.as_str())]
        {
            if contains_card_number(text) {
                return Err(EnvelopeError::Invalid { path: path.into(), reason: "looks like card data".into() });
            }
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
        // A key that carries card data must not become a record key. The scope is identity (see
        // [`PaymentMessage::parse`]).
        serde_json::from_str::<Hint>(body)
            .ok()
            .filter(|h| !contains_card_number(h.idempotency_key.as_str()))
            .map(|h| Self { scope: h.scope, idempotency_key: h.idempotency_key })
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

    #[test]
    fn duplicate_member_names_are_refused_at_any_depth() {
        let body = valid().to_string().replace(r#""channel":"web""#, r#""channel":"web","channel":"app""#);
        assert!(body.contains(r#""channel":"app""#));
        let err = PaymentMessage::parse(&body).unwrap_err();
        assert!(matches!(&err, EnvelopeError::Invalid { reason, .. } if reason.contains("duplicate")), "{err}");
    }

    #[test]
    fn serde_messages_are_reworded_without_the_input_they_quote() {
        let quoted = "invalid type: string \"4242 4242 4242 4242\", expected u64 at line 1 column 30";
        assert_eq!(own_wording(quoted), "wrong type, expected u64");
        let unknown = "unknown field `4242424242424242`, expected one of `amount`, `currency`";
        assert_eq!(own_wording(unknown), "unknown field, expected one of `amount`, `currency`");
        assert_eq!(safe_path("payment.metadata.4242424242424242"), "payment.metadata.[redacted]");
        assert_eq!(safe_path("metadata.a\u{202E}b"), "metadata.a?b");
    }

    #[test]
    fn a_scope_that_passes_the_luhn_check_is_identity_and_parses() {
        let mut doc = valid();
        doc["scope"] = json!("405608656907");
        let message = PaymentMessage::parse(&doc.to_string()).unwrap();
        assert_eq!(message.scope.as_str(), "405608656907");
        assert_eq!(KeyHint::find(&doc.to_string()).map(|h| h.scope), Some(message.scope));
    }

    #[test]
    fn card_data_in_the_envelope_is_refused_and_never_becomes_a_key_hint() {
        let mut doc = valid();
        doc["idempotency_key"] = json!("4242424242424242");
        assert!(matches!(error_of(doc.clone()), EnvelopeError::Invalid { path, .. } if path == "idempotency_key"));
        assert_eq!(KeyHint::find(&doc.to_string()), None);
    }
}
