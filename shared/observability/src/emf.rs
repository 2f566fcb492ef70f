//! CloudWatch Embedded Metric Format (EMF): metrics written as structured log lines, which
//! CloudWatch turns into metrics without any API call on the hot path.
//!
//! Written here rather than taken from `metrics_cloudwatch_embedded`: that crate is a global
//! `metrics` recorder, which ties every handler in a process to one namespace and one buffer,
//! while a handler here is a plain function that tests, the benchmark and the local pipeline run
//! several of in one process. This module keeps a buffer per invocation and implements the
//! limits of the specification exactly: at most 100 metrics per document and 100 values per
//! metric, splitting beyond either (never dropping).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value, json};

/// Most metrics in one EMF document.
pub const MAX_METRICS_PER_DOCUMENT: usize = 100;
/// Most values of one metric in one EMF document.
pub const MAX_VALUES_PER_METRIC: usize = 100;

/// CloudWatch units used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A count of events.
    Count,
    /// A duration in milliseconds.
    Milliseconds,
    /// A duration in seconds.
    Seconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Milliseconds => "Milliseconds",
            Self::Seconds => "Seconds",
        }
    }
}

/// Long-lived per function (built at cold start): namespace, service dimension, and whether the
/// cold-start metric is still owed.
#[derive(Debug)]
pub struct MetricsSink {
    namespace: String,
    service: String,
    cold_start: AtomicBool,
}

impl MetricsSink {
    /// A sink for `service` (the `Service` dimension of every metric) in `namespace`.
    pub fn new(namespace: impl Into<String>, service: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), service: service.into(), cold_start: AtomicBool::new(true) }
    }

    /// A buffer for one invocation; the first one of the process carries `ColdStart = 1`.
    pub fn invocation(&self) -> Metrics {
        let metrics =
            Metrics { namespace: self.namespace.clone(), service: self.service.clone(), ..Metrics::default() };
        if self.cold_start.swap(false, Ordering::Relaxed) {
            metrics.count("ColdStart", 1);
        }
        metrics
    }
}

/// Dimension values (beyond `Service`), in key order.
type DimensionValues = Vec<(String, String)>;

#[derive(Debug, Clone)]
struct Series {
    unit: Unit,
    values: Vec<f64>,
}

/// One invocation's metrics, safe to record into from concurrent record handlers.
#[derive(Debug, Default)]
pub struct Metrics {
    namespace: String,
    service: String,
    series: Mutex<BTreeMap<DimensionValues, BTreeMap<String, Series>>>,
    properties: Mutex<Map<String, Value>>,
}

impl Metrics {
    /// Adds `n` to the counter `name` (dimension: Service).
    pub fn count(&self, name: &str, n: u64) {
        self.count_with(name, n, &[]);
    }

    /// Adds `n` to the counter `name` with extra dimensions (e.g. `Reason`).
    pub fn count_with(&self, name: &str, n: u64, dimensions: &[(&str, &str)]) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let entry = series
            .entry(dimension_values(dimensions))
            .or_default()
            .entry(name.to_owned())
            .or_insert_with(|| Series { unit: Unit::Count, values: vec![0.0] });
        entry.values[0] += n as f64;
    }

    /// Records one observation of `name` (e.g. a latency): every value is kept.
    pub fn observe(&self, name: &str, unit: Unit, value: f64) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        series
            .entry(Vec::new())
            .or_default()
            .entry(name.to_owned())
            .or_insert_with(|| Series { unit, values: Vec::new() })
            .values
            .push(value);
    }

    /// A searchable, non-metric member of every document (request id, function version).
    pub fn property(&self, key: &str, value: impl Into<Value>) {
        self.properties.lock().unwrap_or_else(|p| p.into_inner()).insert(key.to_owned(), value.into());
    }

    /// The EMF documents for everything recorded, at `timestamp_ms`.
    pub fn documents(&self, timestamp_ms: i64) -> Vec<Value> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let properties = self.properties.lock().unwrap_or_else(|p| p.into_inner());
        let mut documents = Vec::new();
        for (dimensions, metrics) in series.iter() {
            // Layer j holds the j-th chunk of 100 values of every metric that has one; each layer
            // is then cut into documents of at most 100 metrics. Nothing is dropped, and no name
            // appears twice in a document.
            let chunked: Vec<(&String, Unit, Vec<&[f64]>)> = metrics
                .iter()
                .map(|(name, s)| (name, s.unit, s.values.chunks(MAX_VALUES_PER_METRIC).collect()))
                .collect();
            let layers = chunked.iter().map(|(_, _, chunks)| chunks.len()).max().unwrap_or(0);
            for layer in 0..layers {
                let members: Vec<(&String, Unit, &[f64])> = chunked
                    .iter()
                    .filter_map(|(name, unit, chunks)| chunks.get(layer).map(|c| (*name, *unit, *c)))
                    .collect();
                for part in members.chunks(MAX_METRICS_PER_DOCUMENT) {
                    documents.push(self.document(timestamp_ms, dimensions, part, &properties));
                }
            }
        }
        documents
    }

    fn document(
        &self,
        timestamp_ms: i64,
        dimensions: &DimensionValues,
        metrics: &[(&String, Unit, &[f64])],
        properties: &Map<String, Value>,
    ) -> Value {
        let mut root = properties.clone();
        let mut keys = vec![Value::from("Service")];
        root.insert("Service".into(), Value::from(self.service.clone()));
        for (key, value) in dimensions {
            keys.push(Value::from(key.clone()));
            root.insert(key.clone(), Value::from(value.clone()));
        }
        let definitions: Vec<Value> =
            metrics.iter().map(|(name, unit, _)| json!({"Name": name, "Unit": unit.as_str()})).collect();
        for (name, _, values) in metrics {
            let value = match values {
                [single] => json!(single),
                many => json!(many),
            };
            root.insert((*name).clone(), value);
        }
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{"Namespace": self.namespace, "Dimensions": [keys], "Metrics": definitions}]
            }),
        );
        Value::Object(root)
    }

    /// Writes the documents, one JSON line each, and empties the buffer (values recorded later
    /// go to the next flush).
    pub fn flush_to(&self, out: &mut impl Write, timestamp_ms: i64) -> std::io::Result<()> {
        let documents = self.documents(timestamp_ms);
        self.series.lock().unwrap_or_else(|p| p.into_inner()).clear();
        for document in documents {
            writeln!(out, "{document}")?;
        }
        out.flush()
    }

    /// Writes to stdout, where Lambda sends it to CloudWatch Logs. Called once per invocation.
    pub fn flush(&self) {
        let now = lambda_support::clock::epoch_ms(std::time::SystemTime::now());
        if let Err(e) = self.flush_to(&mut std::io::stdout().lock(), now) {
            tracing::warn!(error = %e, "could not write metrics");
        }
    }
}

fn dimension_values(dimensions: &[(&str, &str)]) -> DimensionValues {
    let mut values: DimensionValues = dimensions.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    values.sort();
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks a document against the EMF specification
    /// (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>):
    /// the `_aws` metadata, its Timestamp and CloudWatchMetrics directives, every referenced
    /// dimension present as a string member, every metric present as a number or an array of at
    /// most 100 numbers, at most 100 metrics and 30 dimensions per set, valid units, no name both
    /// a metric and a dimension.
    fn validate(doc: &Value) -> Result<(), String> {
        let root = doc.as_object().ok_or("document must be an object")?;
        let aws = root.get("_aws").and_then(Value::as_object).ok_or("_aws must be an object")?;
        aws.get("Timestamp")
            .and_then(Value::as_i64)
            .filter(|t| *t >= 0)
            .ok_or("_aws.Timestamp must be a non-negative integer")?;
        let directives =
            aws.get("CloudWatchMetrics").and_then(Value::as_array).ok_or("CloudWatchMetrics must be an array")?;
        for directive in directives {
            let ns = directive.get("Namespace").and_then(Value::as_str).ok_or("Namespace must be a string")?;
            if ns.is_empty() || ns.len() > 255 {
                return Err("Namespace must be 1..=255 characters".into());
            }
            let sets = directive.get("Dimensions").and_then(Value::as_array).ok_or("Dimensions must be an array")?;
            let mut dimension_names = Vec::new();
            for set in sets {
                let set = set.as_array().ok_or("a dimension set must be an array")?;
                if set.len() > 30 {
                    return Err("at most 30 dimensions per set".into());
                }
                for key in set {
                    let key = key.as_str().ok_or("dimension keys are strings")?;
                    root.get(key).and_then(Value::as_str).ok_or(format!("dimension {key} must be a string member"))?;
                    dimension_names.push(key.to_owned());
                }
            }
            let metrics = directive.get("Metrics").and_then(Value::as_array).ok_or("Metrics must be an array")?;
            if metrics.len() > MAX_METRICS_PER_DOCUMENT {
                return Err(format!("{} metrics in one document", metrics.len()));
            }
            for metric in metrics {
                let name = metric.get("Name").and_then(Value::as_str).ok_or("metric Name must be a string")?;
                if dimension_names.iter().any(|d| d == name) {
                    return Err(format!("{name} is both a metric and a dimension"));
                }
                if let Some(unit) = metric.get("Unit") {
                    let unit = unit.as_str().ok_or("Unit must be a string")?;
                    if !["Count", "Milliseconds", "Seconds", "None", "Percent", "Bytes"].contains(&unit) {
                        return Err(format!("unknown unit {unit}"));
                    }
                }
                match root.get(name) {
                    Some(Value::Number(_)) => {}
                    Some(Value::Array(values))
                        if values.len() <= MAX_VALUES_PER_METRIC && values.iter().all(Value::is_number) => {}
                    other => return Err(format!("metric {name} has an invalid value {other:?}")),
                }
            }
        }
        Ok(())
    }

    fn value_count(docs: &[Value], name: &str) -> usize {
        docs.iter()
            .map(|d| match d.get(name) {
                Some(Value::Array(a)) => a.len(),
                Some(_) => 1,
                None => 0,
            })
            .sum()
    }

    #[test]
    fn counters_and_dimensions_follow_the_specification() {
        let sink = MetricsSink::new("PaymentsPipeline", "processor");
        let metrics = sink.invocation();
        metrics.count("Processed", 2);
        metrics.count("Processed", 1);
        metrics.count_with("Failure", 1, &[("Reason", "provider_503")]);
        metrics.observe("ProcessingLatency", Unit::Milliseconds, 12.5);
        metrics.property("RequestId", "req-1");
        let docs = metrics.documents(1_700_000_000_000);
        for doc in &docs {
            validate(doc).unwrap();
            assert_eq!(doc["RequestId"], "req-1");
        }
        let plain = docs.iter().find(|d| d.get("Processed").is_some()).unwrap();
        assert_eq!(plain["Processed"], 3.0);
        assert_eq!(plain["ColdStart"], 1.0);
        assert_eq!(plain["Service"], "processor");
        let failure = docs.iter().find(|d| d.get("Failure").is_some()).unwrap();
        assert_eq!(failure["Reason"], "provider_503");
        assert_eq!(failure["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["Service", "Reason"]]));
    }

    #[test]
    fn only_the_first_invocation_reports_a_cold_start() {
        let sink = MetricsSink::new("N", "s");
        assert!(sink.invocation().documents(0).iter().any(|d| d.get("ColdStart").is_some()));
        assert!(sink.invocation().documents(0).is_empty());
    }

    #[test]
    fn more_than_100_values_are_split_never_dropped() {
        let metrics = MetricsSink::new("N", "s").invocation();
        for i in 0..250 {
            metrics.observe("Latency", Unit::Milliseconds, f64::from(i));
        }
        let docs = metrics.documents(0);
        docs.iter().try_for_each(validate).unwrap();
        assert_eq!(value_count(&docs, "Latency"), 250);
        assert!(docs.iter().filter(|d| d.get("Latency").is_some()).count() >= 3);
    }

    #[test]
    fn more_than_100_metrics_are_split_never_dropped() {
        let metrics = MetricsSink::new("N", "s").invocation();
        for i in 0..230 {
            metrics.count(&format!("M{i}"), 1);
        }
        let docs = metrics.documents(0);
        docs.iter().try_for_each(validate).unwrap();
        let total: usize =
            docs.iter().map(|d| d["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array().unwrap().len()).sum();
        assert_eq!(total, 231, "230 metrics and the cold start");
        assert_eq!(docs.len(), 3);
    }

    #[test]
    fn flushing_writes_json_lines_and_empties_the_buffer() {
        let metrics = MetricsSink::new("N", "s").invocation();
        metrics.count("Processed", 1);
        let mut out = Vec::new();
        metrics.flush_to(&mut out, 5).unwrap();
        let lines: Vec<Value> =
            String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 1);
        validate(&lines[0]).unwrap();
        assert!(metrics.documents(5).is_empty());
    }

    #[test]
    fn the_validator_rejects_what_the_specification_forbids() {
        assert!(
            validate(&json!({"_aws": {"Timestamp": 1, "CloudWatchMetrics": [
            {"Namespace": "N", "Dimensions": [["Service"]], "Metrics": [{"Name": "M", "Unit": "Count"}]}]}, "M": 1}))
            .is_err(),
            "missing dimension"
        );
        assert!(
            validate(&json!({"_aws": {"Timestamp": 1, "CloudWatchMetrics": [
            {"Namespace": "N", "Dimensions": [[]], "Metrics": [{"Name": "M", "Unit": "Count"}]}]}, "M": "x"}))
            .is_err(),
            "non-numeric value"
        );
        let too_many: Vec<i32> = (0..101).collect();
        assert!(
            validate(&json!({"_aws": {"Timestamp": 1, "CloudWatchMetrics": [
            {"Namespace": "N", "Dimensions": [[]], "Metrics": [{"Name": "M"}]}]}, "M": too_many}))
            .is_err(),
            "101 values"
        );
    }
}
