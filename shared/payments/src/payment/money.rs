//! Money as integer minor units with an ISO 4217 currency: never a float anywhere.

use std::fmt;

/// An ISO 4217 currency that has minor units and is legal tender (no funds, metals or test
/// codes), looked up in the `iso_currency` crate's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(iso_currency::Currency);

/// Why a currency code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CurrencyError(String);

impl Currency {
    /// Parses an upper-case three-letter code such as `EUR`.
    pub fn from_code(code: &str) -> Result<Self, CurrencyError> {
        let currency = iso_currency::Currency::from_code(code)
            .ok_or_else(|| CurrencyError("not an ISO 4217 currency code (expected e.g. \"EUR\")".into()))?;
        if currency.exponent().is_none() || currency.is_fund() || currency.is_special() {
            return Err(CurrencyError(format!("{} is not a currency that can be charged", currency.code())));
        }
        Ok(Self(currency))
    }

    /// The three-letter code.
    pub fn code(self) -> &'static str {
        self.0.code()
    }

    /// Digits after the decimal point (2 for EUR, 0 for JPY, 3 for KWD): how to read an amount.
    pub fn exponent(self) -> u16 {
        self.0.exponent().unwrap_or(0)
    }
}

impl TryFrom<String> for Currency {
    type Error = CurrencyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::from_code(&value)
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> Self {
        currency.code().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An amount in minor units (cents for EUR): positive, and within the range every JSON parser
/// reads exactly (2^53 − 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct MinorUnits(u64);

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AmountError(String);

impl MinorUnits {
    /// Largest representable amount.
    pub const MAX: u64 = (1 << 53) - 1;

    /// Validates an amount.
    pub fn new(amount: u64) -> Result<Self, AmountError> {
        if amount == 0 {
            return Err(AmountError("must be greater than 0".into()));
        }
        if amount > Self::MAX {
            return Err(AmountError(format!("must be at most {}", Self::MAX)));
        }
        Ok(Self(amount))
    }

    /// The amount.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl TryFrom<u64> for MinorUnits {
    type Error = AmountError;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<MinorUnits> for u64 {
    fn from(amount: MinorUnits) -> Self {
        amount.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currencies_are_checked_against_iso_4217() {
        assert_eq!(Currency::from_code("EUR").unwrap().exponent(), 2);
        assert_eq!(Currency::from_code("JPY").unwrap().exponent(), 0);
        assert_eq!(Currency::from_code("KWD").unwrap().exponent(), 3);
        for bad in ["eur", "EURO", "ABC", "XAU", "XTS", "BOV", ""] {
            assert!(Currency::from_code(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn amounts_are_positive_and_exact_in_json() {
        assert!(MinorUnits::new(0).is_err());
        assert!(MinorUnits::new(1).is_ok());
        assert!(MinorUnits::new(MinorUnits::MAX).is_ok());
        assert!(MinorUnits::new(MinorUnits::MAX + 1).is_err());
        assert!(serde_json::from_str::<MinorUnits>("10.5").is_err(), "no fractional minor units");
        assert!(serde_json::from_str::<MinorUnits>("-5").is_err());
    }
}
