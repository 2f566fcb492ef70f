//! Typed configuration from the environment, read and validated once at cold start: a bad value
//! stops the function at init with a message naming the variable, instead of failing payments.

use std::str::FromStr;
use std::time::Duration;

/// Why configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    /// A variable does not parse.
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// Values that are fine alone but break a rule together.
    #[error("configuration rule violated: {0}")]
    Rule(String),
}

/// Reads variables through a lookup function, so tests pass a map instead of touching the
/// process environment.
pub struct Env<F: Fn(&str) -> Option<String>> {
    lookup: F,
}

impl Env<fn(&str) -> Option<String>> {
    /// The process environment: what a function reads at cold start.
    pub fn process() -> Self {
        Self { lookup: |name| std::env::var(name).ok() }
    }
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// Variables from `lookup`: tests give a function its configuration without touching the
    /// process environment.
    pub fn from_lookup(lookup: F) -> Self {
        Self { lookup }
    }

    /// A required, non-empty string.
    pub fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty()).ok_or(ConfigError::Missing(name))
    }

    /// An optional string with a default.
    pub fn string_or(&self, name: &'static str, default: &str) -> String {
        (self.lookup)(name).filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_owned())
    }

    /// A parsed value with a default.
    pub fn parse_or<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match (self.lookup)(name).filter(|v| !v.trim().is_empty()) {
            None => Ok(default),
            Some(value) => {
                value.trim().parse().map_err(|e: T::Err| ConfigError::Invalid { name, value, reason: e.to_string() })
            }
        }
    }

    /// A boolean (`true`/`false`) with a default.
    pub fn flag_or(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        self.parse_or(name, default)
    }

    /// Milliseconds with a default.
    pub fn millis_or(&self, name: &'static str, default_ms: u64) -> Result<Duration, ConfigError> {
        self.parse_or(name, default_ms).map(Duration::from_millis)
    }

    /// Seconds with a default.
    pub fn secs_or(&self, name: &'static str, default_s: u64) -> Result<Duration, ConfigError> {
        self.parse_or(name, default_s).map(Duration::from_secs)
    }

    /// Days with a default (retention periods).
    pub fn days_or(&self, name: &'static str, default_days: u64) -> Result<Duration, ConfigError> {
        self.parse_or(name, default_days).map(|days: u64| Duration::from_secs(days.saturating_mul(24 * 3600)))
    }

    /// An `http://` or `https://` URL.
    pub fn url(&self, name: &'static str) -> Result<String, ConfigError> {
        let value = self.required(name)?;
        if !(value.starts_with("https://") || value.starts_with("http://")) {
            return Err(ConfigError::Invalid { name, value, reason: "must be an http(s) URL".into() });
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        Env::from_lookup(move |name| map.get(name).cloned())
    }

    #[test]
    fn errors_name_the_variable() {
        let e = env(&[("N", "ten"), ("U", "ftp://x")]);
        assert_eq!(e.required("MISSING"), Err(ConfigError::Missing("MISSING")));
        assert!(matches!(e.parse_or::<u32>("N", 1), Err(ConfigError::Invalid { name: "N", .. })));
        assert!(e.url("U").is_err());
        assert_eq!(e.millis_or("ABSENT", 250).unwrap(), Duration::from_millis(250));
    }
}
