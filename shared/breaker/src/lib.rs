//! A circuit breaker shared by a fleet of functions: provider health as one DynamoDB item, so
//! that a provider outage stops calls from every instance, and exactly one instance probes for
//! its recovery.
//!
//! - [`protocol`]: the rules, pure (closed → open → half-open → closed), unit- and
//!   property-tested.
//! - [`store`]: the persistence port; the DynamoDB (feature `dynamodb`, default) and [`memory`]
//!   adapters.
//! - [`guard`]: [`CircuitBreaker`], admission and reports with a per-instance cache.
//!
//! ```
//! use std::sync::Arc;
//! use fleet_breaker::{Admitted, BreakerConfig, CallHealth, CircuitBreaker, Permit};
//! use fleet_breaker::memory::InMemoryBreakerStore;
//! use lambda_support::clock::SystemClock;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! // Two instances of a fleet, one shared state.
//! let store = InMemoryBreakerStore::default();
//! let a = CircuitBreaker::new(store.clone(), BreakerConfig::named("provider"), Arc::new(SystemClock));
//! let b = CircuitBreaker::new(store, BreakerConfig::named("provider"), Arc::new(SystemClock));
//! for _ in 0..5 {
//!     let Admitted::Go(permit) = a.admit().await else { break };
//!     a.record(&permit, Some(CallHealth::Unhealthy)).await; // the provider failed
//! }
//! assert!(matches!(b.admit().await, Admitted::Wait { .. }), "b stops calling too");
//! # });
//! ```

#![deny(missing_docs)]

#[cfg(feature = "dynamodb")]
pub mod dynamodb;
pub mod guard;
pub mod memory;
pub mod protocol;
pub mod store;

pub use guard::{Admitted, BreakerConfig, CircuitBreaker, Permit, Transition};
pub use protocol::{BreakerPolicy, BreakerState, CallHealth, Circuit, Phase};
pub use store::{BreakerStore, BreakerStoreError, Written};
