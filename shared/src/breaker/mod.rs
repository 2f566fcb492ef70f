//! A circuit breaker shared by a fleet of functions: provider health as one DynamoDB item, so
//! that a provider outage stops calls from every instance, and exactly one instance probes for
//! its recovery.
//!
//! - [`protocol`]: the rules, pure (closed → open → half-open → closed), unit- and
//!   property-tested.
//! - [`store`]: the persistence port; [`dynamodb`] and [`memory`] adapters.
//! - [`guard`]: [`CircuitBreaker`], admission and reports with a per-instance cache.

pub mod dynamodb;
pub mod guard;
pub mod memory;
pub mod protocol;
pub mod store;

pub use guard::{Admitted, BreakerConfig, CircuitBreaker, Permit, Transition};
pub use protocol::{BreakerPolicy, BreakerState, CallHealth, Circuit, Phase};
pub use store::{BreakerStore, BreakerStoreError, Written};
