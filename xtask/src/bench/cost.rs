//! The AWS bill per million payments, from what the benchmark measured: Lambda compute and
//! requests, DynamoDB on-demand request units, SQS requests, and CloudWatch Logs ingestion (the
//! EMF metrics are log lines).

/// Prices in USD, us-east-1, arm64, on-demand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    /// Lambda compute, per GB-second (arm64).
    pub lambda_gb_second: f64,
    /// Lambda, per request.
    pub lambda_request: f64,
    /// DynamoDB on-demand, per write request unit (an item up to 1 KB).
    pub dynamodb_write: f64,
    /// DynamoDB on-demand, per read request unit (a strongly consistent read up to 4 KB).
    pub dynamodb_read: f64,
    /// SQS standard queue, per request (up to 64 KB each).
    pub sqs_request: f64,
    /// CloudWatch Logs ingestion, per GB.
    pub logs_gb: f64,
}

/// Where the prices come from: they change, so every printed bill names them.
pub const PRICES_SOURCE: &str = "AWS public price list for us-east-1 (Lambda arm64, DynamoDB on-demand after its \
     November 2024 reduction, SQS standard, CloudWatch Logs standard ingestion), as published in 2025; free tiers \
     left out";

/// The prices of [`PRICES_SOURCE`].
pub const US_EAST_1: Prices = Prices {
    lambda_gb_second: 0.000_013_333_4,
    lambda_request: 0.20 / 1e6,
    dynamodb_write: 0.625 / 1e6,
    dynamodb_read: 0.125 / 1e6,
    sqs_request: 0.40 / 1e6,
    logs_gb: 0.50,
};

/// Lambda gives a function one full vCPU at 1,769 MB, and a proportional share below.
const MB_PER_VCPU: f64 = 1769.0;

/// SQS requests per payment, the same for both implementations: the intake's SendMessage, and the
/// event source mapping's ReceiveMessage and DeleteMessageBatch shared by a batch of ten.
const SQS_REQUESTS_PER_PAYMENT: f64 = 1.0 + 2.0 / 10.0;

/// What one implementation was measured to cost per message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerMessage {
    /// Wall time of a batch divided by its messages (ms).
    pub wall_ms: f64,
    /// CPU time per message (ms), as measured on a full core.
    pub cpu_ms: f64,
    /// DynamoDB writes per message.
    pub writes: f64,
    /// DynamoDB reads per message.
    pub reads: f64,
    /// Bytes written to stdout per message (what CloudWatch Logs ingests).
    pub log_bytes: f64,
}

/// A bill per million payments, in USD, by line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bill {
    /// Lambda GB-seconds.
    pub lambda_compute: f64,
    /// Lambda invocations (one per batch of ten).
    pub lambda_requests: f64,
    /// DynamoDB request units.
    pub dynamodb: f64,
    /// SQS requests.
    pub sqs: f64,
    /// CloudWatch Logs ingestion.
    pub logs: f64,
}

impl Bill {
    /// The sum of the lines.
    pub fn total(&self) -> f64 {
        self.lambda_compute + self.lambda_requests + self.dynamodb + self.sqs + self.logs
    }
}

/// The bill for a million payments processed in batches of `batch_size` by a function of
/// `memory_mb`. A message is billed for its wall time, or for its CPU time stretched by the
/// function's share of a vCPU when that is longer: at 256 MB a function gets a seventh of a core,
/// so CPU that takes 1 ms here takes about 7 ms there.
pub fn per_million(measured: &PerMessage, memory_mb: f64, batch_size: f64, prices: &Prices) -> Bill {
    const PAYMENTS: f64 = 1e6;
    let share = (memory_mb / MB_PER_VCPU).min(1.0);
    let billed_ms = measured.wall_ms.max(measured.cpu_ms / share);
    Bill {
        lambda_compute: PAYMENTS * billed_ms / 1000.0 * (memory_mb / 1024.0) * prices.lambda_gb_second,
        lambda_requests: PAYMENTS / batch_size * prices.lambda_request,
        dynamodb: PAYMENTS * (measured.writes * prices.dynamodb_write + measured.reads * prices.dynamodb_read),
        sqs: PAYMENTS * SQS_REQUESTS_PER_PAYMENT * prices.sqs_request,
        logs: PAYMENTS * measured.log_bytes / 1e9 * prices.logs_gb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn measured(wall_ms: f64, cpu_ms: f64) -> PerMessage {
        PerMessage { wall_ms, cpu_ms, writes: 2.0, reads: 0.0, log_bytes: 100.0 }
    }

    #[test]
    fn a_known_bill() {
        // 10 ms of wall time per message at 1,024 MB: 1e6 × 0.01 s × 1 GB = 10,000 GB-s.
        let bill = per_million(&measured(10.0, 1.0), 1024.0, 10.0, &US_EAST_1);
        assert!((bill.lambda_compute - 10_000.0 * 0.000_013_333_4).abs() < 1e-9);
        assert!((bill.lambda_requests - 0.02).abs() < 1e-12);
        assert!((bill.dynamodb - 1.25).abs() < 1e-12);
        assert!((bill.sqs - 0.48).abs() < 1e-12);
        assert!((bill.logs - 0.05).abs() < 1e-12);
    }

    #[test]
    fn cpu_is_stretched_by_the_vcpu_share() {
        // 1 ms of CPU at 256 MB takes 1769 / 256 ≈ 6.9 ms, longer than 2 ms of wall time.
        let stretched = per_million(&measured(2.0, 1.0), 256.0, 10.0, &US_EAST_1);
        let at_wall = per_million(&measured(6.91, 0.0), 256.0, 10.0, &US_EAST_1);
        assert!((stretched.lambda_compute - at_wall.lambda_compute).abs() / at_wall.lambda_compute < 0.001);
    }

    proptest! {
        #[test]
        fn more_cpu_or_wall_never_costs_less(wall in 0.0f64..100.0, cpu in 0.0f64..20.0, more in 0.0f64..10.0) {
            let base = per_million(&measured(wall, cpu), 256.0, 10.0, &US_EAST_1).total();
            prop_assert!(per_million(&measured(wall + more, cpu), 256.0, 10.0, &US_EAST_1).total() >= base);
            prop_assert!(per_million(&measured(wall, cpu + more), 256.0, 10.0, &US_EAST_1).total() >= base);
        }
    }
}
