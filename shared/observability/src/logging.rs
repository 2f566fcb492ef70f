//! JSON structured logs, one object per line, every field at the top level so that CloudWatch
//! Logs Insights can filter on it (`filter idempotency_key = "order-1001"`):
//!
//! ```json
//! {"timestamp":"2026-11-29T07:40:00.123456Z","level":"INFO","service":"processor",
//!  "message":"message processed","requestId":"…","xrayTraceId":"…","idempotency_key":"order-1001",…}
//! ```
//!
//! `requestId` and `xrayTraceId` come from the span `lambda_runtime` opens around each
//! invocation; the event's own fields follow. The keys `timestamp`, `level` and `message` are
//! the ones Lambda's JSON log format reads, so its level filtering works on these lines.
//! Written with `json-subscriber` (tracing-subscriber's own JSON format nests event fields under
//! `fields` and span fields under `span`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The level filter: `AWS_LAMBDA_LOG_LEVEL` (set by Lambda's logging configuration) wins, then
/// `RUST_LOG`, then `info`.
pub fn level_filter(lambda_level: Option<&str>, rust_log: Option<&str>) -> EnvFilter {
    let directive = match (lambda_level, rust_log) {
        // Lambda's levels are TRACE, DEBUG, INFO, WARN, ERROR and FATAL; tracing has no FATAL.
        (Some(level), _) if level.eq_ignore_ascii_case("fatal") => "error".to_owned(),
        (Some(level), _) => level.to_ascii_lowercase(),
        (None, Some(directives)) => directives.to_owned(),
        (None, None) => "info".to_owned(),
    };
    EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The JSON layer writing to `writer`, every line carrying `service`.
pub fn json_layer<S, W>(service: &str, writer: W) -> json_subscriber::JsonLayer<S, W>
where
    S: tracing::Subscriber + for<'lookup> tracing_subscriber::registry::LookupSpan<'lookup>,
    W: for<'writer> tracing_subscriber::fmt::MakeWriter<'writer> + 'static,
{
    let mut layer = json_subscriber::JsonLayer::new(writer);
    layer
        .with_timer("timestamp", tracing_subscriber::fmt::time::SystemTime)
        .with_level("level")
        .with_flattened_event()
        .with_top_level_flattened_span_list();
    layer.add_static_field("service", serde_json::Value::from(service));
    layer
}

/// Installs the JSON subscriber for `service` once per process, writing to stdout (Lambda
/// sends it to CloudWatch Logs), with X-Ray subsegments when Lambda runs an X-Ray daemon
/// ([`super::xray`]). Later calls (tests, several handlers in one process) are no-ops.
pub fn init_json_logs(service: &str) {
    let filter =
        level_filter(std::env::var("AWS_LAMBDA_LOG_LEVEL").ok().as_deref(), std::env::var("RUST_LOG").ok().as_deref());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(json_layer(service, std::io::stdout))
        .with(super::xray::XRayLayer::from_env())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_field_is_at_the_top_level_with_a_timestamp_and_the_invocations_ids() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry().with(json_layer("processor", move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("Lambda runtime invoke", requestId = "req-1", xrayTraceId = "Root=1-abc");
            let _entered = span.enter();
            tracing::info!(idempotency_key = "order-1001", attempt = 2, "message processed");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["message"], "message processed");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["service"], "processor");
        assert_eq!(line["idempotency_key"], "order-1001", "{line}");
        assert_eq!(line["attempt"], 2);
        assert_eq!((line["requestId"].as_str(), line["xrayTraceId"].as_str()), (Some("req-1"), Some("Root=1-abc")));
        let timestamp = line["timestamp"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(timestamp).is_ok(), "RFC 3339: {timestamp}");
        assert!(line.get("fields").is_none() && line.get("span").is_none(), "nothing nested: {line}");
    }

    #[test]
    fn lambdas_log_level_wins_over_rust_log() {
        assert_eq!(level_filter(Some("WARN"), Some("debug")).to_string(), "warn");
        assert_eq!(level_filter(Some("FATAL"), None).to_string(), "error");
        assert_eq!(level_filter(None, Some("processor=debug")).to_string(), "processor=debug");
        assert_eq!(level_filter(None, None).to_string(), "info");
    }
}
