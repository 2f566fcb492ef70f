//! What an idempotency record is keyed by: the operation it guards, the caller's scope and the
//! caller's idempotency key. Validated once, at the edge, so the store never sees a bad key.

use std::fmt;

/// Why a scope, key or operation name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Empty, or longer than the limit.
    #[error("{what} must be 1 to {max} characters long (got {len})")]
    Length {
        /// Which part of the key.
        what: &'static str,
        /// The longest accepted, in bytes.
        max: usize,
        /// The length given, in bytes.
        len: usize,
    },
    /// A character outside what the part allows.
    #[error("{what} may contain only {allowed}")]
    Charset {
        /// Which part of the key.
        what: &'static str,
        /// The allowed characters, in words.
        allowed: &'static str,
    },
    /// A stored partition key that is not `{operation}#{scope}#{key}`.
    #[error("not a record's partition key (operation#scope#key)")]
    PartitionKey,
}

fn check_len(what: &'static str, value: &str, max: usize) -> Result<(), KeyError> {
    if value.is_empty() || value.len() > max {
        return Err(KeyError::Length { what, max, len: value.len() });
    }
    Ok(())
}

/// The name of the guarded operation (`intake`, `process`): records of different operations on
/// the same payment never collide.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Operation(String);

impl Operation {
    /// Lower-case letters, digits, `-` and `_`, at most 32 characters.
    pub fn new(name: &str) -> Result<Self, KeyError> {
        check_len("operation", name, 32)?;
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
            return Err(KeyError::Charset { what: "operation", allowed: "a-z, 0-9, '-' and '_'" });
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The caller the key belongs to (tenant, API client). Two callers using the same idempotency key
/// must never see each other's records, so the scope is part of every record key. It always comes
/// from the caller's authenticated identity, never from a request body.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope(String);

impl Scope {
    /// Printable ASCII without spaces, at most 128 characters.
    pub fn new(scope: &str) -> Result<Self, KeyError> {
        check_len("scope", scope, 128)?;
        if !scope.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(KeyError::Charset { what: "scope", allowed: "printable ASCII without spaces" });
        }
        Ok(Self(scope.to_owned()))
    }

    /// The scope as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Scope {
    type Error = KeyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<Scope> for String {
    fn from(scope: Scope) -> Self {
        scope.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The client's idempotency key: 1 to 255 printable ASCII characters, as Stripe and the IETF
/// Idempotency-Key draft allow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Longest key accepted: Stripe's limit, and the IETF Idempotency-Key draft's.
    pub const MAX_LEN: usize = 255;

    /// Validates a key as the client sent it: 1 to 255 printable ASCII characters.
    pub fn new(key: &str) -> Result<Self, KeyError> {
        check_len("idempotency key", key, Self::MAX_LEN)?;
        if !key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(KeyError::Charset { what: "idempotency key", allowed: "printable ASCII" });
        }
        Ok(Self(key.to_owned()))
    }

    /// The key as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = KeyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<IdempotencyKey> for String {
    fn from(key: IdempotencyKey) -> Self {
        key.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The full identity of one record: `{operation}#{scope}#{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordKey {
    /// The guarded operation.
    pub operation: Operation,
    /// Whose key it is: from the caller's identity, never from a request body.
    pub scope: Scope,
    /// The client's idempotency key.
    pub key: IdempotencyKey,
}

impl RecordKey {
    /// Bundles three parts validated already; [`Self::parse`] validates strings.
    pub fn new(operation: Operation, scope: Scope, key: IdempotencyKey) -> Self {
        Self { operation, scope, key }
    }

    /// Validates and bundles the three parts as given: `RecordKey::parse("send-receipt",
    /// tenant, order_id)`.
    pub fn parse(operation: &str, scope: &str, key: &str) -> Result<Self, KeyError> {
        Ok(Self::new(Operation::new(operation)?, Scope::new(scope)?, IdempotencyKey::new(key)?))
    }

    /// The DynamoDB partition key. `#` and `%` in the scope are percent-encoded, and operation
    /// names cannot contain `#`, so the first two `#` always delimit the parts and no two
    /// (scope, key) pairs share a partition key, whatever the key contains.
    pub fn partition_key(&self) -> String {
        format!("{}#{}#{}", self.operation.as_str(), escape_scope(self.scope.as_str()), self.key.as_str())
    }

    /// Reads a partition key back (the inverse of [`Self::partition_key`]): a completer finds
    /// records by an index that holds only their keys.
    pub fn from_partition_key(pk: &str) -> Result<Self, KeyError> {
        let mut parts = pk.splitn(3, '#');
        let (Some(operation), Some(scope), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(KeyError::PartitionKey);
        };
        let scope = scope.replace("%23", "#").replace("%25", "%");
        Self::parse(operation, &scope, key)
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.partition_key())
    }
}

fn escape_scope(scope: &str) -> String {
    scope.replace('%', "%25").replace('#', "%23")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(scope: &str, key: &str) -> RecordKey {
        RecordKey::new(
            Operation::new("process").unwrap(),
            Scope::new(scope).unwrap(),
            IdempotencyKey::new(key).unwrap(),
        )
    }

    #[test]
    fn partition_key_names_operation_scope_and_key() {
        assert_eq!(record("acme", "k-123").partition_key(), "process#acme#k-123");
    }

    #[test]
    fn scope_delimiters_cannot_forge_another_scope() {
        // Without escaping, both would be "process#a#b#c".
        assert_ne!(record("a#b", "c").partition_key(), record("a", "b#c").partition_key());
    }

    #[test]
    fn keys_outside_printable_ascii_are_refused() {
        assert!(IdempotencyKey::new("").is_err());
        assert!(IdempotencyKey::new(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::new("tab\there").is_err());
        assert!(IdempotencyKey::new("clé").is_err());
        assert!(IdempotencyKey::new(&"k".repeat(255)).is_ok());
        assert!(Scope::new("has space").is_err());
        assert!(Operation::new("Process").is_err());
    }

    proptest! {
        #[test]
        fn distinct_scope_key_pairs_never_share_a_partition_key(
            a in "[!-~]{1,12}", b in "[ -~]{1,12}", c in "[!-~]{1,12}", d in "[ -~]{1,12}",
        ) {
            prop_assume!((a.as_str(), b.as_str()) != (c.as_str(), d.as_str()));
            prop_assert_ne!(record(&a, &b).partition_key(), record(&c, &d).partition_key());
        }

        #[test]
        fn partition_keys_read_back_to_the_same_record_key(scope in "[!-~]{1,20}", key in "[ -~]{1,40}") {
            let original = record(&scope, &key);
            prop_assert_eq!(RecordKey::from_partition_key(&original.partition_key()).unwrap(), original);
        }
    }
}
