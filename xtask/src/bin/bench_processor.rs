//! The Rust side of the benchmark, run as its own process so that its CPU time and peak RSS are
//! its own: this project's processor handler, in-process, with real AWS clients.
//!
//! ```text
//! bench_processor --messages FILE   run every batch through the handler; print JSON statistics
//! bench_processor --floor N         N × (claim, provider call, completion) in sequence; print JSON
//! ```
//!
//! Configuration comes from the environment, as the function's does (see docs/deploying.md, "Configuration").

use std::time::Instant;

use aws_lambda_events::sqs::SqsMessage;
use lambda_idempotency::{ClaimOutcome, IdempotencyKey, PayloadHash, Scope};
use lambda_support::clock::{Clock, SystemClock};
use lambda_support::env::Env;
use localenv::metering::RequestCounter;
use payments_core::payment::http_gateway::HttpGateway;
use payments_core::payment::{ChargeRequest, PaymentGateway, PaymentMessage, process_key, provider_idempotency_key};
use processor::{Processor, ProcessorConfig, build_with_clients};
use serde_json::json;

/// This process's CPU time (user + system, seconds) and peak resident memory (KiB).
fn cpu_and_rss() -> (f64, i64) {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (seconds(usage.ru_utime) + seconds(usage.ru_stime), peak_rss_kib().unwrap_or(usage.ru_maxrss))
}

/// The peak resident memory of this process's own address space (`VmHWM`). Not `ru_maxrss`:
/// Linux carries the spawning process's peak into it across exec, so a child of a 25 MiB parent
/// reports at least 25 MiB whatever it uses.
fn peak_rss_kib() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

type Error = Box<dyn std::error::Error>;

/// The processor as the benchmark runs it: the deployed adapters, the HTTP gateway built without
/// a key store.
type AwsProcessor<G> = Processor<processor::Aws<G>>;

/// As the functions run (see `functions/processor/src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let config = ProcessorConfig::from_env(&Env::process())?;
    let sdk = lambda_support::aws::load_config().await;
    let counter = RequestCounter::new();
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk).interceptor(counter.clone()).build(),
    );
    let gateway = HttpGateway::new(&config.provider)?;
    let processor = build_with_clients(&config, dynamodb, aws_sdk_sqs::Client::new(&sdk), gateway);
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("--messages"), Some(file)) => run_messages(&processor, &counter, file).await,
        (Some("--floor"), n) => run_floor(&processor, n.and_then(|n| n.parse().ok()).unwrap_or(50)).await,
        _ => Err("usage: bench_processor --messages FILE | --floor N".into()),
    }
}

/// Every batch of `file` through the handler; prints the batch durations, the DynamoDB requests
/// by operation, this process's CPU time over every batch but the first (and the first's apart),
/// and its peak RSS.
async fn run_messages(
    processor: &AwsProcessor<HttpGateway>,
    counter: &RequestCounter,
    file: &str,
) -> Result<(), Error> {
    let batches: Vec<Vec<SqsMessage>> = serde_json::from_str(&std::fs::read_to_string(file)?)?;
    let (mut cpu_before, _) = cpu_and_rss();
    let mut first_batch_cpu_s = 0.0;
    let mut batch_ms = Vec::with_capacity(batches.len());
    let mut failures = 0;
    for (i, batch) in batches.iter().enumerate() {
        if i == 1 {
            // The first batch pays the one-time set-up (connections, root certificates): counted
            // apart, as cold start is, so that the CPU per message is the steady state's.
            let (cpu_now, _) = cpu_and_rss();
            first_batch_cpu_s = cpu_now - cpu_before;
            cpu_before = cpu_now;
        }
        let started = Instant::now();
        let deadline = SystemClock.now_ms() + 60_000;
        let summary = processor.process_batch(batch, deadline, "bench").await;
        batch_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        failures += summary.response.batch_item_failures.len();
        if (i + 1) % 10 == 0 {
            eprintln!("  {} of {} batches", i + 1, batches.len());
        }
    }
    let (cpu_after, rss) = cpu_and_rss();
    let out = json!({
        "batch_ms": batch_ms,
        "messages": batches.iter().map(Vec::len).sum::<usize>(),
        "cpu_messages": batches.iter().skip(1).map(Vec::len).sum::<usize>(),
        "failures": failures,
        "dynamodb_requests": counter.by_operation(),
        "dynamodb_items": counter.items_by_operation(),
        "first_batch_cpu_s": first_batch_cpu_s,
        "cpu_s": cpu_after - cpu_before,
        "peak_rss_kib": rss,
    });
    println!("{out}");
    Ok(())
}

/// `n` × (claim, provider call, completion) in sequence, the least one payment can take.
async fn run_floor(processor: &AwsProcessor<HttpGateway>, n: usize) -> Result<(), Error> {
    let scope = Scope::new("bench-floor")?;
    let mut floor_ms = Vec::with_capacity(n);
    for i in 0..n {
        let key = IdempotencyKey::new(&format!("floor-{}-{i}", std::process::id()))?;
        let message = PaymentMessage::parse(
            &json!({"schema_version": 1, "idempotency_key": key, "scope": scope,
                "payment": {"amount": 100, "currency": "EUR", "payment_method": "pm_card_visa", "merchant_reference": "floor"},
                "created_at": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                "correlation_id": "floor"})
            .to_string(),
        )?;
        let started = Instant::now();
        let record = process_key(&scope, &key);
        let hash = PayloadHash::of(&message.payment)?;
        let ClaimOutcome::Claimed(lease) =
            processor.idempotency().claim(&record, &hash, SystemClock.now_ms() + 60_000).await?
        else {
            return Err("floor: claim refused".into());
        };
        let charge = processor
            .gateway()
            .charge(&ChargeRequest {
                idempotency_key: provider_idempotency_key(&scope, &key),
                amount: message.payment.amount,
                currency: message.payment.currency,
                payment_method: message.payment.payment_method.clone(),
                merchant_reference: message.payment.merchant_reference.clone(),
                metadata: message.payment.metadata.clone(),
            })
            .await?;
        processor.idempotency().complete(&lease, &json!({"charge_id": charge.id})).await?;
        floor_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    println!("{}", json!({ "floor_ms": floor_ms }));
    Ok(())
}
