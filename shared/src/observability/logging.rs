//! JSON structured logs (tracing-subscriber), one line per event, for CloudWatch Logs Insights.

/// Installs the JSON subscriber once per process; `RUST_LOG` filters (default `info`). Later
/// calls (tests, several handlers in one process) are no-ops.
pub fn init_json_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .without_time()
        .try_init();
}
