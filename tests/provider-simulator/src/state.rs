//! The provider's memory: stored responses per idempotency key, the ledger, statistics.

use std::collections::{BTreeMap, HashMap};

use crate::capacity::{CapacityStats, Gate};
use crate::faults::Fault;

/// One charge made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LedgerEntry {
    /// Charge id.
    pub id: String,
    /// The idempotency key it was made under.
    pub idempotency_key: String,
    /// Minor units.
    pub amount: u64,
    /// Lower-case currency, as sent.
    pub currency: String,
    /// The merchant reference (charge description).
    pub description: String,
    /// The metadata sent.
    pub metadata: serde_json::Value,
}

/// What `GET /ledger` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LedgerSnapshot {
    /// Every charge, in order.
    pub charges: Vec<LedgerEntry>,
    /// Charge requests received.
    pub requests: u64,
    /// Requests answered from a stored response.
    pub replays: u64,
    /// Requests refused because the key was reused with another body.
    pub key_reuses: u64,
    /// Declines made (stored, and replayed like charges).
    pub declines: u64,
    /// Requests per idempotency key.
    pub requests_by_key: BTreeMap<String, u64>,
    /// Faults injected, by name.
    pub faults: BTreeMap<String, u64>,
    /// Lookups received (`GET /v1/charges?…`).
    #[serde(default)]
    pub lookups: u64,
    /// Requests refused with 401 for a wrong or missing API key (in neither `requests` nor
    /// `lookups`).
    #[serde(default)]
    pub unauthorized: u64,
    /// Charges made (the length of `charges`, which `GET /ledger?summary` leaves empty).
    #[serde(default)]
    pub charge_count: u64,
    /// What the capacity limits saw (throttled requests are in neither `requests` nor `lookups`).
    #[serde(default)]
    pub capacity: CapacityStats,
}

/// A stored answer.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub status: u16,
    pub body: String,
}

/// An idempotency key's entry.
#[derive(Debug, Clone)]
pub enum KeyEntry {
    /// The first request with this key is still running.
    InFlight,
    /// The first request finished; this is its answer.
    Done { body_hash: String, response: StoredResponse },
}

/// Everything behind the simulator's lock.
#[derive(Debug, Default)]
pub struct State {
    pub keys: HashMap<String, KeyEntry>,
    pub lookups_by_value: HashMap<String, u32>,
    pub ledger: LedgerSnapshot,
    pub next_charge: u64,
    pub gate: Gate,
}

impl State {
    /// Counts a request with `key` and returns its 0-based attempt number.
    pub fn count_request(&mut self, key: &str) -> u32 {
        self.ledger.requests += 1;
        let n = self.ledger.requests_by_key.entry(key.to_owned()).or_default();
        *n += 1;
        u32::try_from(*n - 1).unwrap_or(u32::MAX)
    }

    /// Counts a lookup for `value` and returns its 0-based attempt number.
    pub fn count_lookup(&mut self, value: &str) -> u32 {
        self.ledger.lookups += 1;
        let n = self.lookups_by_value.entry(value.to_owned()).or_default();
        *n += 1;
        *n - 1
    }

    /// The ledger with the capacity figures as they are now.
    pub fn snapshot(&self) -> LedgerSnapshot {
        LedgerSnapshot {
            capacity: self.gate.stats.clone(),
            charge_count: self.ledger.charges.len() as u64,
            ..self.ledger.clone()
        }
    }

    /// The counts alone, without the charges and the per-key counts: cheap to poll in a large run.
    pub fn summary(&self) -> LedgerSnapshot {
        let ledger = &self.ledger;
        LedgerSnapshot {
            charges: Vec::new(),
            requests: ledger.requests,
            replays: ledger.replays,
            key_reuses: ledger.key_reuses,
            declines: ledger.declines,
            requests_by_key: BTreeMap::new(),
            faults: ledger.faults.clone(),
            lookups: ledger.lookups,
            unauthorized: ledger.unauthorized,
            charge_count: ledger.charges.len() as u64,
            capacity: self.gate.stats.clone(),
        }
    }

    /// Counts an injected fault.
    pub fn count_fault(&mut self, fault: Fault) {
        *self.ledger.faults.entry(fault.name()).or_default() += 1;
    }
}
