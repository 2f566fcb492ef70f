//! Logs and metrics: JSON structured logs, and CloudWatch EMF metrics.

pub mod emf;
pub mod logging;
pub mod xray;

pub use emf::{Metrics, MetricsSink, Unit};
pub use logging::init_json_logs;
