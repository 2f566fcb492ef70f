//! The payments domain: what a payment is and what may happen to it, written over the
//! idempotency, SQS-batch and breaker libraries of this workspace.
//!
//! - [`payment`]: money, the request and the queued envelope, card data (refused at the edge),
//!   the provider port and its HTTP client, credentials, statuses, resolution by lookup.
//! - [`failures`]: one record per dead-lettered or poison payment, for operators, and the redrive
//!   that sends exactly what was accepted.
//! - [`pacing`]: the provider's rate limit, shared by the fleet.
//! - [`budget`]: how long a payment may keep retrying before it is given up.

#![deny(missing_docs)]

pub mod budget;
pub mod failures;
pub mod pacing;
pub mod payment;
