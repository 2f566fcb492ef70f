//! Observability for Lambda functions written once, for every function: JSON log lines with
//! their fields at the top level (what CloudWatch Logs Insights filters on, and what Lambda's
//! JSON log format expects), CloudWatch metrics as Embedded Metric Format documents buffered per
//! invocation and flushed once, and X-Ray subsegments for the spans a function marks.
//!
//! ```
//! use lambda_observability::{MetricsSink, Unit};
//!
//! let sink = MetricsSink::new("Shop", "receipts");
//! let metrics = sink.invocation();
//! metrics.count("ReceiptSent", 1);
//! metrics.observe("SendLatency", Unit::Milliseconds, 12.5);
//! let documents = metrics.documents(0);
//! assert_eq!(documents[0]["ReceiptSent"], 1.0);
//! ```

#![deny(missing_docs)]

pub mod emf;
pub mod logging;
pub mod xray;

pub use emf::{Metrics, MetricsSink, Unit};
pub use logging::init_json_logs;
