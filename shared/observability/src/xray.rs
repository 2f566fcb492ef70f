//! X-Ray subsegments for the steps of a payment (claim, charge, settle), so that a trace shows
//! where an invocation spent its time, not only that it ran.
//!
//! With active tracing, Lambda records each invocation as a segment and passes its trace header
//! to the function (`lambda_runtime` puts it on its invocation span as `xrayTraceId`). A span
//! opened with target [`TARGET`] under that span becomes, when it closes, a subsegment document
//! sent over UDP to the X-Ray daemon Lambda runs beside the function (`AWS_XRAY_DAEMON_ADDRESS`).
//! Written here because no maintained X-Ray client exists for Rust (`xray-lite` and
//! `xray-tracing` are 0.0.x and unmaintained) and the OpenTelemetry route needs the ADOT layer;
//! the daemon protocol is a header line and one JSON document per datagram.

use std::net::{SocketAddr, UdpSocket};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::Subscriber;
use tracing::span::{Attributes, Id};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The target of spans that become subsegments: `tracing::info_span!(target: xray::TARGET, "charge")`.
pub const TARGET: &str = "xray";

/// The parts of a trace header (`Root=…;Parent=…;Sampled=1`) a subsegment needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeader {
    /// `1-xxxxxxxx-yyyyyyyyyyyyyyyyyyyyyyyy`.
    pub root: String,
    /// The function segment's id: the subsegment's parent.
    pub parent: String,
    /// Whether this trace is recorded.
    pub sampled: bool,
}

impl TraceHeader {
    /// Parses Lambda's trace header; `None` without a root and a parent.
    pub fn parse(header: &str) -> Option<Self> {
        let field = |name: &str| {
            header.split(';').filter_map(|part| part.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
        };
        Some(Self {
            root: field("Root")?.to_owned(),
            parent: field("Parent")?.to_owned(),
            sampled: field("Sampled") == Some("1"),
        })
    }
}

/// Where a step's span started, and the trace it belongs to.
struct Step {
    name: &'static str,
    start: f64,
    trace: Option<TraceHeader>,
}

/// The trace header recorded on the invocation span.
struct Invocation(TraceHeader);

/// Sends a subsegment for every [`TARGET`] span of a sampled invocation.
pub struct XRayLayer {
    socket: UdpSocket,
    daemon: SocketAddr,
}

impl XRayLayer {
    /// Sends to `daemon`.
    pub fn new(daemon: SocketAddr) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(("0.0.0.0", 0))?;
        socket.set_nonblocking(true)?;
        Ok(Self { socket, daemon })
    }

    /// The daemon Lambda names in `AWS_XRAY_DAEMON_ADDRESS` (`host:port`, or the
    /// `tcp:… udp:…` pair); `None` outside Lambda or with tracing off.
    pub fn from_env() -> Option<Self> {
        let value = std::env::var("AWS_XRAY_DAEMON_ADDRESS").ok()?;
        let udp = value.split_whitespace().find_map(|part| part.strip_prefix("udp:")).unwrap_or(value.trim());
        Self::new(udp.parse().ok()?).ok()
    }
}

fn now_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// Reads `xrayTraceId` off the invocation span's fields.
struct TraceIdVisitor(Option<String>);

impl tracing::field::Visit for TraceIdVisitor {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "xrayTraceId" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "xrayTraceId" {
            self.0 = Some(format!("{value:?}").trim_matches('"').to_owned());
        }
    }
}

impl<S> Layer<S> for XRayLayer
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut visitor = TraceIdVisitor(None);
        attrs.record(&mut visitor);
        if let Some(header) = visitor.0.as_deref().and_then(TraceHeader::parse) {
            span.extensions_mut().insert(Invocation(header));
            return;
        }
        if attrs.metadata().target() != TARGET {
            return;
        }
        let trace =
            span.scope().skip(1).find_map(|ancestor| ancestor.extensions().get::<Invocation>().map(|i| i.0.clone()));
        span.extensions_mut().insert(Step { name: attrs.metadata().name(), start: now_seconds(), trace });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let extensions = span.extensions();
        let Some(Step { name, start, trace: Some(trace) }) = extensions.get::<Step>() else { return };
        if !trace.sampled {
            return;
        }
        let document = serde_json::json!({
            "name": name,
            "id": format!("{:016x}", rand::random::<u64>()),
            "trace_id": trace.root,
            "parent_id": trace.parent,
            "type": "subsegment",
            "start_time": start,
            "end_time": now_seconds(),
        });
        let datagram = format!("{{\"format\": \"json\", \"version\": 1}}\n{document}");
        // Best effort, as the X-Ray SDKs do: a lost subsegment must never fail a payment.
        let _ = self.socket.send_to(datagram.as_bytes(), self.daemon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    const HEADER: &str = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";

    #[test]
    fn the_header_is_read_and_unsampled_traces_are_known() {
        let header = TraceHeader::parse(HEADER).unwrap();
        assert_eq!(
            (header.root.as_str(), header.parent.as_str(), header.sampled),
            ("1-5759e988-bd862e3fe1be46a994272793", "53995c3f42cd8ad8", true)
        );
        assert!(!TraceHeader::parse("Root=1-a-b;Parent=c;Sampled=0").unwrap().sampled);
        assert_eq!(TraceHeader::parse("Root=1-a-b"), None);
    }

    /// Runs two steps and another span under an invocation span carrying `header`; returns what
    /// the daemon got.
    fn daemon_receives(header: &str) -> Vec<serde_json::Value> {
        let daemon = UdpSocket::bind("127.0.0.1:0").unwrap();
        daemon.set_read_timeout(Some(std::time::Duration::from_millis(300))).unwrap();
        let layer = XRayLayer::new(daemon.local_addr().unwrap()).unwrap();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let invocation = tracing::info_span!("Lambda runtime invoke", requestId = "r", xrayTraceId = header);
            let _in_invocation = invocation.enter();
            drop(tracing::info_span!(target: TARGET, "claim").entered());
            drop(tracing::info_span!(target: TARGET, "charge").entered());
            drop(tracing::info_span!("not a step").entered());
        });
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(n) = daemon.recv(&mut buffer) {
            let text = std::str::from_utf8(&buffer[..n]).unwrap();
            let (header_line, document) = text.split_once('\n').unwrap();
            assert_eq!(header_line, r#"{"format": "json", "version": 1}"#);
            received.push(serde_json::from_str(document).unwrap());
        }
        received
    }

    #[test]
    fn each_step_of_a_sampled_invocation_becomes_a_subsegment_of_its_function_segment() {
        let received = daemon_receives(HEADER);
        let names: Vec<&str> = received.iter().map(|d| d["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["claim", "charge"]);
        for document in &received {
            assert_eq!(document["trace_id"], "1-5759e988-bd862e3fe1be46a994272793");
            assert_eq!(document["parent_id"], "53995c3f42cd8ad8");
            assert_eq!(document["type"], "subsegment");
            assert_eq!(document["id"].as_str().unwrap().len(), 16);
            assert!(document["end_time"].as_f64().unwrap() >= document["start_time"].as_f64().unwrap());
        }
    }

    #[test]
    fn an_unsampled_invocation_sends_nothing() {
        assert!(daemon_receives("Root=1-a-b;Parent=c;Sampled=0").is_empty());
    }
}
