//! A payment request as the client sends it and as the processor executes it.

use std::collections::BTreeMap;

use super::card_data::{contains_card_number, is_forbidden_char};
use super::money::{Currency, MinorUnits};

/// A token naming a stored payment method at the provider (`pm_…`), never card data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PaymentMethodToken(String);

/// The refusal of control, bidirectional and zero-width characters.
const FORBIDDEN_CHARS: &str = "must not contain control, bidirectional-override or zero-width characters";

/// Why a field of a payment request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FieldError(String);

impl PaymentMethodToken {
    /// `pm_` followed by 1 to 120 letters, digits or underscores; nothing that looks like a card
    /// number.
    pub fn new(token: &str) -> Result<Self, FieldError> {
        if contains_card_number(token) {
            return Err(FieldError(
                "looks like a card number: send a payment method token (pm_...), never card data".into(),
            ));
        }
        let rest = token
            .strip_prefix("pm_")
            .ok_or_else(|| FieldError("must be a payment method token starting with pm_".into()))?;
        if rest.is_empty() || rest.len() > 120 || !rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(FieldError("must be pm_ followed by 1 to 120 letters, digits or underscores".into()));
        }
        Ok(Self(token.to_owned()))
    }

    /// The token.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PaymentMethodToken {
    type Error = FieldError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<PaymentMethodToken> for String {
    fn from(token: PaymentMethodToken) -> Self {
        token.0
    }
}

/// The merchant's own reference (order number): 1 to 128 printable characters, no card data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MerchantReference(String);

impl MerchantReference {
    /// Validates a reference.
    pub fn new(reference: &str) -> Result<Self, FieldError> {
        if reference.is_empty() || reference.chars().count() > 128 {
            return Err(FieldError("must be 1 to 128 characters".into()));
        }
        if reference.chars().any(is_forbidden_char) {
            return Err(FieldError(FORBIDDEN_CHARS.into()));
        }
        if contains_card_number(reference) {
            return Err(FieldError("looks like a card number: card data is never accepted".into()));
        }
        Ok(Self(reference.to_owned()))
    }

    /// The reference.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MerchantReference {
    type Error = FieldError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<MerchantReference> for String {
    fn from(reference: MerchantReference) -> Self {
        reference.0
    }
}

/// Small string-to-string metadata, with Stripe's limits (20 keys of at most 40 characters, values
/// of at most 500), and no card data in keys or values.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(into = "BTreeMap<String, String>")]
pub struct Metadata(BTreeMap<String, String>);

/// Read entry by entry, so that a key given twice is refused rather than silently kept once (a
/// `BTreeMap` keeps the last): the payload hash assumes I-JSON (RFC 7493). The structs around it
/// need nothing of the kind: serde's derive refuses a duplicate field itself.
impl<'de> serde::Deserialize<'de> for Metadata {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = BTreeMap<String, String>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    if entries.insert(key, value).is_some() {
                        return Err(serde::de::Error::custom("duplicate key in metadata"));
                    }
                }
                Ok(entries)
            }
        }
        let entries = deserializer.deserialize_map(Entries)?;
        Self::try_from(entries).map_err(serde::de::Error::custom)
    }
}

impl Metadata {
    /// Most keys.
    pub const MAX_KEYS: usize = 20;

    /// The entries, in key order.
    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl TryFrom<BTreeMap<String, String>> for Metadata {
    type Error = FieldError;
    fn try_from(map: BTreeMap<String, String>) -> Result<Self, Self::Error> {
        if map.len() > Self::MAX_KEYS {
            return Err(FieldError(format!("at most {} keys", Self::MAX_KEYS)));
        }
        // The messages never quote a key or a value: either may be the card data being refused.
        for (key, value) in &map {
            if key.is_empty() || key.chars().count() > 40 {
                return Err(FieldError("keys must be 1 to 40 characters".into()));
            }
            if value.chars().count() > 500 {
                return Err(FieldError("values must be at most 500 characters".into()));
            }
            if key.chars().chain(value.chars()).any(is_forbidden_char) {
                return Err(FieldError(FORBIDDEN_CHARS.into()));
            }
            if contains_card_number(key) || contains_card_number(value) {
                return Err(FieldError("a key or value looks like a card number: card data is never accepted".into()));
            }
        }
        Ok(Self(map))
    }
}

impl From<Metadata> for BTreeMap<String, String> {
    fn from(metadata: Metadata) -> Self {
        metadata.0
    }
}

/// What the client asks for: charge `amount` minor units of `currency` to `payment_method`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    /// Amount in minor units of `currency`.
    pub amount: MinorUnits,
    /// ISO 4217 code.
    pub currency: Currency,
    /// The provider's token for the payment method.
    pub payment_method: PaymentMethodToken,
    /// The merchant's reference.
    pub merchant_reference: MerchantReference,
    /// Optional metadata passed on to the provider.
    #[serde(default)]
    pub metadata: Metadata,
}
