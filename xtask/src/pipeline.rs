//! `demo` and `up`.

use std::process::ExitCode;
use std::time::Duration;

use localenv::pipeline::{PipelineOptions, run, start};
use localenv::workload::WorkloadSpec;

/// Size and fault mix of a demo run.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Distinct payments.
    #[arg(long, default_value_t = 150)]
    payments: usize,
    /// Seed of the workload and of the provider's fault draws.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Total probability of a provider fault per request, spread over 500/503/429/reset/
    /// commit-then-timeout/latency as in the default mix (0 disables rate faults).
    #[arg(long, default_value_t = 0.17)]
    fault_rate: f64,
    /// Payments scripted to fail every attempt (they end DEAD_LETTERED).
    #[arg(long, default_value_t = 3)]
    dead_letters: usize,
    /// Deliveries before dead-lettering.
    #[arg(long, default_value_t = 5)]
    max_receive_count: u32,
    /// SIGKILL the processor mid-batch and restart it.
    #[arg(long)]
    kill_processor: bool,
    /// Port of the runtime emulator.
    #[arg(long, default_value_t = 9400)]
    port: u16,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 240)]
    timeout_s: u64,
}

/// Options for `up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// Port of the runtime emulator.
    #[arg(long, default_value_t = 9000)]
    port: u16,
}

/// Runs the main job.
pub async fn demo(args: DemoArgs) -> Result<ExitCode, String> {
    let mut options = PipelineOptions {
        workload: WorkloadSpec {
            payments: args.payments,
            seed: args.seed,
            dead_letters: args.dead_letters,
            ..WorkloadSpec::default()
        },
        max_receive_count: args.max_receive_count,
        port: args.port,
        settle_timeout: Duration::from_secs(args.timeout_s),
        kill_processor: args.kill_processor,
        ..PipelineOptions::default()
    };
    options.simulator.seed = args.seed;
    let default_total = 0.17;
    let scale = if default_total > 0.0 { args.fault_rate / default_total } else { 0.0 };
    let r = &mut options.simulator.rates;
    for rate in [
        &mut r.internal_error,
        &mut r.unavailable,
        &mut r.rate_limited,
        &mut r.connection_reset,
        &mut r.commit_then_timeout,
        &mut r.latency,
    ] {
        *rate *= scale;
    }
    r.validate()?;
    let started = std::time::Instant::now();
    let reconciliation = run(&options).await.map_err(|e| e.to_string())?;
    println!("\n{}", reconciliation.table());
    println!("wall time: {:.1} s (including start-up and shutdown)", started.elapsed().as_secs_f64());
    Ok(if reconciliation.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Keeps the pipeline up for manual use.
pub async fn up(args: UpArgs) -> Result<ExitCode, String> {
    let mut options = PipelineOptions { port: args.port, ..PipelineOptions::default() };
    options.simulator.rates = provider_simulator::FaultRates::default();
    let running = start(&options).await.map_err(|e| e.to_string())?;
    let url = running.intake_url();
    println!(
        "The pipeline is up (stack {}). Try:\n\n  curl -i -X POST {url} \\\n    -H 'Idempotency-Key: order-1001' -H 'X-Local-Scope: acme' \\\n    -H 'Content-Type: application/json' \\\n    -d '{{\"amount\": 1250, \"currency\": \"EUR\", \"payment_method\": \"pm_card_visa\", \"merchant_reference\": \"order-1001\"}}'\n\n  curl -s {url}/order-1001 -H 'X-Local-Scope: acme'\n\nProvider ledger: {}/ledger   Logs: {}\nCtrl-C stops everything.",
        running.stack.name,
        running.simulator.base_url(),
        running.log_dir.display()
    );
    let _ = tokio::signal::ctrl_c().await;
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
