//! A payment provider on loopback that behaves like Stripe where it matters here:
//!
//! - `POST /v1/charges` honours `Idempotency-Key`: the same key and body return the first
//!   response (marked `Idempotent-Replayed: true`) and never charge twice; the same key with a
//!   different body is refused with 422; a request while the first is still running gets 409.
//! - `GET /ledger` lists every charge made, and counts requests, replays and injected faults
//!   (`GET /ledger?summary`: the counts alone, cheap to poll during a large run).
//! - Faults are injected per request or by rate, deterministically under a seed: latency,
//!   500/503, 429, connection reset, and commit-then-timeout (charge, then answer only after the
//!   client has given up).
//! - A capacity, when set: a rate limit and a concurrency limit over charges and lookups, each
//!   answered beyond with 429 and `Retry-After`; `GET /ledger` reports the peak rate offered and
//!   admitted, so a run shows whether its clients kept under the limit.
//!
//! Per-request faults come from the charge's metadata: `"simulate": "commit_then_timeout,500"`
//! applies the listed faults to the first, second, … request with that idempotency key. Rate
//! faults are drawn from a hash of (seed, key, attempt number), so a run is reproducible whatever
//! order requests arrive in.

mod capacity;
mod faults;
mod server;
mod state;

pub use capacity::{Capacity, CapacityStats};
pub use faults::{Fault, FaultRates};
pub use server::{SimConfig, Simulator};
pub use state::{LedgerEntry, LedgerSnapshot};
