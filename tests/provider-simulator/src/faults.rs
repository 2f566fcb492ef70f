//! Which fault, if any, a request meets.

use sha2::{Digest, Sha256};

/// A fault the simulator can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Answer 500 without charging.
    #[serde(rename = "500")]
    InternalError,
    /// Answer 503 without charging.
    #[serde(rename = "503")]
    Unavailable,
    /// Answer 429 (with Retry-After: 1) without charging.
    #[serde(rename = "429")]
    RateLimited,
    /// Answer 409 (a request with this key is in flight) without charging: a failure of one
    /// payment, not of the provider.
    #[serde(rename = "409")]
    Conflict,
    /// Hold the answer back until the client has given up, without charging (a provider that
    /// is down behind a load balancer that still accepts connections).
    Timeout,
    /// Drop the connection without answering, without charging.
    ConnectionReset,
    /// Charge, then hold the answer back until the client has given up.
    CommitThenTimeout,
    /// Answer normally, after the configured extra latency.
    Latency,
}

impl Fault {
    /// Parses one name as written in metadata (`500`, `503`, `429`, `409`, `connection_reset`,
    /// `timeout`, `commit_then_timeout`, `latency`).
    pub fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.trim().to_owned())).ok()
    }

    /// The name as written in metadata and reported in the ledger's statistics.
    pub fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }
}

/// Probabilities (0..=1) of each fault per request; their sum must not exceed 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FaultRates {
    /// 500s.
    pub internal_error: f64,
    /// 503s.
    pub unavailable: f64,
    /// 429s.
    pub rate_limited: f64,
    /// Dropped connections.
    pub connection_reset: f64,
    /// No answer in time, nothing charged.
    pub timeout: f64,
    /// Charge, then answer too late.
    pub commit_then_timeout: f64,
    /// Extra latency.
    pub latency: f64,
}

impl FaultRates {
    /// Checks that every rate is a probability and that they sum to at most 1.
    pub fn validate(&self) -> Result<(), String> {
        let rates = self.as_list();
        if rates.iter().any(|(_, r)| !(0.0..=1.0).contains(r)) {
            return Err("every fault rate must be between 0 and 1".into());
        }
        if self.total() > 1.0 + 1e-9 {
            return Err("fault rates must sum to at most 1".into());
        }
        Ok(())
    }

    /// The probability that a request meets any fault (slow answers included).
    pub fn total(&self) -> f64 {
        self.as_list().iter().map(|(_, r)| r).sum()
    }

    fn as_list(&self) -> [(Fault, f64); 7] {
        [
            (Fault::InternalError, self.internal_error),
            (Fault::Unavailable, self.unavailable),
            (Fault::RateLimited, self.rate_limited),
            (Fault::ConnectionReset, self.connection_reset),
            (Fault::Timeout, self.timeout),
            (Fault::CommitThenTimeout, self.commit_then_timeout),
            (Fault::Latency, self.latency),
        ]
    }

    /// The fault drawn for the `attempt`-th request (0-based) with `key`, under `seed`.
    pub fn draw(&self, seed: u64, key: &str, attempt: u32) -> Option<Fault> {
        let mut hasher = Sha256::new();
        hasher.update(seed.to_le_bytes());
        hasher.update(key.as_bytes());
        hasher.update(attempt.to_le_bytes());
        let digest = hasher.finalize();
        let word = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        let point = (word >> 11) as f64 / (1u64 << 53) as f64;
        let mut cumulative = 0.0;
        for (fault, rate) in self.as_list() {
            cumulative += rate;
            if point < cumulative {
                return Some(fault);
            }
        }
        None
    }
}

/// The fault scripted in a charge's metadata for its `attempt`-th request (0-based).
pub fn scripted(metadata: &serde_json::Value, attempt: u32) -> Option<Fault> {
    let script = metadata.get("simulate")?.as_str()?;
    script.split(',').nth(attempt as usize).and_then(Fault::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_deterministic_and_follow_the_rates() {
        let rates = FaultRates { internal_error: 0.2, commit_then_timeout: 0.1, ..FaultRates::default() };
        let draws: Vec<_> = (0..2000).map(|i| rates.draw(7, &format!("k{i}"), 0)).collect();
        let again: Vec<_> = (0..2000).map(|i| rates.draw(7, &format!("k{i}"), 0)).collect();
        assert_eq!(draws, again);
        let errors = draws.iter().filter(|f| **f == Some(Fault::InternalError)).count();
        let commits = draws.iter().filter(|f| **f == Some(Fault::CommitThenTimeout)).count();
        assert!((300..500).contains(&errors), "{errors}");
        assert!((130..270).contains(&commits), "{commits}");
        assert_ne!(draws, (0..2000).map(|i| rates.draw(8, &format!("k{i}"), 0)).collect::<Vec<_>>());
    }

    #[test]
    fn scripts_apply_per_attempt() {
        let metadata = serde_json::json!({"simulate": "commit_then_timeout, 500, 409, timeout"});
        assert_eq!(scripted(&metadata, 0), Some(Fault::CommitThenTimeout));
        assert_eq!(scripted(&metadata, 1), Some(Fault::InternalError));
        assert_eq!(scripted(&metadata, 2), Some(Fault::Conflict));
        assert_eq!(scripted(&metadata, 3), Some(Fault::Timeout));
        assert_eq!(scripted(&metadata, 4), None);
    }

    #[test]
    fn rates_must_be_probabilities() {
        assert!(FaultRates { internal_error: 0.7, unavailable: 0.7, ..FaultRates::default() }.validate().is_err());
        assert!(FaultRates { latency: -0.1, ..FaultRates::default() }.validate().is_err());
    }
}
