//! The payload fingerprint stored with each record: a key reused with a different payload must be
//! told apart from an honest retry, whatever order the client serialised its JSON fields in.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;

/// SHA-256 (hex) of a payload in RFC 8785 canonical JSON (JCS: sorted keys, fixed number and
/// string forms), computed with the `serde_jcs` crate.
///
/// JCS writes every number as an IEEE double, so two integers beyond 2^53 can share one form.
/// Payloads must therefore be I-JSON (RFC 7493): such integers are refused, never hashed alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PayloadHash(String);

impl PayloadHash {
    /// Fingerprint of any serialisable payload, by its canonical JSON form.
    pub fn of<T: Serialize + ?Sized>(payload: &T) -> Result<Self, HashError> {
        let value = serde_json::to_value(payload).map_err(|e| HashError::NotJson(e.to_string()))?;
        check_i_json(&value, &mut String::from("$"))?;
        let canonical = serde_jcs::to_vec(&value).map_err(|e| HashError::NotJson(e.to_string()))?;
        Ok(Self::of_bytes(&canonical))
    }

    /// Fingerprint of raw bytes, for payloads that are not JSON at all (poison messages).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        let digest = Sha256::digest(bytes);
        Self(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Rebuilds a hash read back from a store.
    pub fn from_stored(hex: String) -> Self {
        Self(hex)
    }

    /// The hex SHA-256 digest, as stored in `payload_hash`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a payload cannot be fingerprinted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// The payload does not serialise to JSON.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// An integer outside ±(2^53 − 1), which canonical JSON cannot tell from its neighbours.
    #[error("number at {path} is outside the interoperable range ±9007199254740991")]
    NumberOutOfRange {
        /// JSON path of the number, e.g. `$.metadata.count`.
        path: String,
    },
}

/// Largest integer every JSON implementation (and JCS) represents exactly.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

fn check_i_json(value: &serde_json::Value, path: &mut String) -> Result<(), HashError> {
    use serde_json::Value;
    match value {
        Value::Number(number) => {
            let out_of_range = match (number.as_i64(), number.as_u64()) {
                (Some(i), _) => i.unsigned_abs() > MAX_SAFE_INTEGER,
                (None, Some(u)) => u > MAX_SAFE_INTEGER,
                (None, None) => false,
            };
            if out_of_range {
                return Err(HashError::NumberOutOfRange { path: path.clone() });
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                check_i_json(item, path)?;
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                check_i_json(item, path)?;
                path.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
    Ok(())
}

impl fmt::Display for PayloadHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    /// Arbitrary JSON documents of bounded size (numbers limited to integers and finite floats).
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-(MAX_SAFE_INTEGER as i64)..=MAX_SAFE_INTEGER as i64).prop_map(Value::from),
            (-1.0e12..1.0e12f64).prop_map(Value::from),
            "[ -~]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The same document with the fields of every object in reverse order, written as text, so the
    /// order really differs on the wire.
    fn reversed_text(value: &Value) -> String {
        match value {
            Value::Object(map) => {
                let fields: Vec<String> = map
                    .iter()
                    .rev()
                    .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), reversed_text(v)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }
            Value::Array(items) => format!("[{}]", items.iter().map(reversed_text).collect::<Vec<_>>().join(",")),
            other => other.to_string(),
        }
    }

    /// Every way to change one value somewhere in the document.
    fn mutate(value: &Value, path: &[usize]) -> Value {
        match (value, path.split_first()) {
            (Value::Object(map), Some((i, rest))) if !map.is_empty() => {
                let idx = i % map.len();
                let mut out = Map::new();
                for (n, (k, v)) in map.iter().enumerate() {
                    out.insert(k.clone(), if n == idx { mutate(v, rest) } else { v.clone() });
                }
                Value::Object(out)
            }
            (Value::Array(items), Some((i, rest))) if !items.is_empty() => {
                let idx = i % items.len();
                Value::Array(
                    items.iter().enumerate().map(|(n, v)| if n == idx { mutate(v, rest) } else { v.clone() }).collect(),
                )
            }
            (Value::Null, _) => Value::Bool(false),
            (Value::Bool(b), _) => Value::Bool(!b),
            (Value::Number(n), _) => match n.as_i64() {
                Some(i) if i >= MAX_SAFE_INTEGER as i64 => Value::from(i - 1),
                Some(i) => Value::from(i + 1),
                None => Value::from(n.as_f64().unwrap_or(0.0) + 1.0),
            },
            (Value::String(s), _) => Value::String(format!("{s}x")),
            (Value::Object(_), _) => json!({"added": 1}),
            (Value::Array(_), _) => json!([1]),
        }
    }

    proptest! {
        #[test]
        fn field_order_does_not_change_the_hash(doc in json_value()) {
            let reordered: Value = serde_json::from_str(&reversed_text(&doc)).unwrap();
            prop_assert_eq!(PayloadHash::of(&doc).unwrap(), PayloadHash::of(&reordered).unwrap());
        }

        #[test]
        fn changing_any_value_changes_the_hash(doc in json_value(), path in prop::collection::vec(any::<usize>(), 0..4)) {
            let changed = mutate(&doc, &path);
            prop_assume!(changed != doc);
            prop_assert_ne!(PayloadHash::of(&doc).unwrap(), PayloadHash::of(&changed).unwrap());
        }
    }

    #[test]
    fn integers_beyond_2_pow_53_are_refused_not_conflated() {
        let a = json!({"amount": 9_007_199_254_740_993_u64});
        assert_eq!(PayloadHash::of(&a).unwrap_err(), HashError::NumberOutOfRange { path: "$.amount".into() });
        assert!(PayloadHash::of(&json!([9_007_199_254_740_991_u64])).is_ok());
        assert!(PayloadHash::of(&json!({"x": [1, -9_007_199_254_740_992_i64]})).is_err());
    }

    #[test]
    fn whitespace_and_order_in_the_text_do_not_matter() {
        let a: Value = serde_json::from_str(r#"{"amount": 1000, "currency": "EUR"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"currency":"EUR","amount":1000}"#).unwrap();
        assert_eq!(PayloadHash::of(&a).unwrap(), PayloadHash::of(&b).unwrap());
        assert_eq!(PayloadHash::of(&a).unwrap().as_str().len(), 64);
    }
}
