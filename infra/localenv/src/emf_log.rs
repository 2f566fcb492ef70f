//! Reads EMF documents out of function logs, as CloudWatch would, and keeps totals per metric:
//! the local pipeline's reconciliation compares them with the provider's ledger.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// The values of a metric's dimensions other than `Service`.
pub type Dimensions = Vec<(String, String)>;

/// A metric's identity: service, name, and the values of its other dimensions.
pub type MetricKey = (String, String, Dimensions);

/// Totals (sum of values) and raw values of every metric seen.
#[derive(Debug, Clone, Default)]
pub struct MetricTotals {
    inner: Arc<Mutex<BTreeMap<MetricKey, Vec<f64>>>>,
}

impl MetricTotals {
    /// Adds the metrics of one log line if it is an EMF document; ignores anything else.
    pub fn ingest(&self, line: &str) {
        let Ok(doc) = serde_json::from_str::<Value>(line) else { return };
        let Some(directives) = doc.pointer("/_aws/CloudWatchMetrics").and_then(Value::as_array) else { return };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for directive in directives {
            let dimensions: Vec<String> = directive
                .pointer("/Dimensions/0")
                .and_then(Value::as_array)
                .map(|d| d.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default();
            let service = doc.get("Service").and_then(Value::as_str).unwrap_or("").to_owned();
            let others: Vec<(String, String)> = dimensions
                .iter()
                .filter(|d| *d != "Service")
                .map(|d| (d.clone(), doc.get(d).and_then(Value::as_str).unwrap_or("").to_owned()))
                .collect();
            for metric in directive.get("Metrics").and_then(Value::as_array).into_iter().flatten() {
                let Some(name) = metric.get("Name").and_then(Value::as_str) else { continue };
                let values: Vec<f64> = match doc.get(name) {
                    Some(Value::Array(a)) => a.iter().filter_map(Value::as_f64).collect(),
                    Some(v) => v.as_f64().into_iter().collect(),
                    None => Vec::new(),
                };
                inner.entry((service.clone(), name.to_owned(), others.clone())).or_default().extend(values);
            }
        }
    }

    /// Sum of a metric's series without extra dimensions (a metric also published per reason
    /// would otherwise count twice).
    pub fn sum(&self, service: &str, name: &str) -> f64 {
        self.filtered(service, name).iter().filter(|(d, _)| d.is_empty()).map(|(_, v)| v.iter().sum::<f64>()).sum()
    }

    /// Sum of a metric per value of its extra dimensions.
    pub fn by_dimension(&self, service: &str, name: &str) -> BTreeMap<String, f64> {
        self.filtered(service, name)
            .into_iter()
            .filter(|(dims, _)| !dims.is_empty())
            .map(|(dims, v)| {
                (dims.iter().map(|(_, value)| value.as_str()).collect::<Vec<_>>().join(","), v.iter().sum())
            })
            .collect()
    }

    /// A percentile (0–100) of every value of a metric without extra dimensions.
    pub fn percentile(&self, service: &str, name: &str, p: f64) -> Option<f64> {
        let mut values: Vec<f64> =
            self.filtered(service, name).into_iter().filter(|(d, _)| d.is_empty()).flat_map(|(_, v)| v).collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
        values.get(rank).copied()
    }

    fn filtered(&self, service: &str, name: &str) -> Vec<(Dimensions, Vec<f64>)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .iter()
            .filter(|((s, n, _), _)| s == service && n == name)
            .map(|((_, _, d), v)| (d.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_counts_and_keeps_dimensions_apart() {
        let totals = MetricTotals::default();
        totals.ingest(r#"{"level":"INFO","fields":{}}"#);
        totals.ingest(r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[["Service"]],"Metrics":[{"Name":"Processed"},{"Name":"Latency"}]}]},"Service":"processor","Processed":2,"Latency":[1,2,3]}"#);
        totals.ingest(r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[["Service","Reason"]],"Metrics":[{"Name":"Failure"}]}]},"Service":"processor","Reason":"provider_503","Failure":1}"#);
        assert_eq!(totals.sum("processor", "Processed"), 2.0);
        assert_eq!(totals.by_dimension("processor", "Failure")["provider_503"], 1.0);
        assert_eq!(totals.percentile("processor", "Latency", 50.0), Some(2.0));
    }
}
