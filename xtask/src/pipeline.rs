//! `demo` and `up`.

use std::process::ExitCode;
use std::time::Duration;

use localenv::pipeline::{PipelineOptions, Scenario, run, start};
use localenv::workload::WorkloadSpec;

/// Size and fault mix of a demo run.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// What happens: only the provider's fault rates (`faults`), a total outage for a window
    /// (`outage`: 503s and timeouts), a degraded provider for a window (`brownout`: slow
    /// answers, timeouts and commit-then-timeout), every payment at once against a provider with
    /// a rate limit (`spike`), or the provider's faults and 10 % of the functions' DynamoDB, SQS
    /// and Secrets Manager calls failing too (`aws-faults`).
    #[arg(long, value_enum, default_value_t = ScenarioArg::Faults)]
    scenario: ScenarioArg,
    /// Length of the outage or brownout, seconds.
    #[arg(long, default_value_t = 120)]
    incident_s: u64,
    /// The provider's rate limit in the spike, requests per second (the processor is paced at
    /// 90 % of it).
    #[arg(long, default_value_t = 4)]
    provider_limit: u32,
    /// Distinct payments [default: 150, 200 with an incident, 2000 in a spike].
    #[arg(long)]
    payments: Option<usize>,
    /// Seed of the workload and of the provider's fault draws.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Total probability of a provider fault per request, spread over 500/503/429/reset/
    /// commit-then-timeout/latency as in the default mix (0 disables rate faults) [default:
    /// 0.17, or 0 in a spike, which is about capacity].
    #[arg(long)]
    fault_rate: Option<f64>,
    /// Share of the functions' AWS calls (DynamoDB items, SQS messages, the provider key's
    /// secret) that fail: throttled, 500, dropped before the service saw them, answer lost after
    /// the service committed, or answer late (`--aws-slow-ms`) [default: 0, or 0.1 with
    /// `--scenario aws-faults`].
    #[arg(long)]
    aws_fault_rate: Option<f64>,
    /// How late a slow AWS answer comes, milliseconds (0: no slow answers among the AWS faults).
    #[arg(long, default_value_t = 6000)]
    aws_slow_ms: u64,
    /// Payments scripted to fail every attempt (they end DEAD_LETTERED) [default: 3, or 0 in
    /// an outage or a spike, where any dead letter is a failure of the run].
    #[arg(long)]
    dead_letters: Option<usize>,
    /// Failed provider attempts before the processor gives a payment up.
    #[arg(long, default_value_t = 5)]
    max_provider_attempts: u32,
    /// Deliveries before SQS dead-letters a message (the safety net for crashes).
    #[arg(long, default_value_t = 50)]
    max_receive_count: u32,
    /// SIGKILL the processor mid-batch and restart it.
    #[arg(long)]
    kill_processor: bool,
    /// Port of the local intake (its front door; the runtime emulator listens 1000 above).
    #[arg(long, default_value_t = 9400)]
    port: u16,
    /// Clients submitting at once [default: 8, or 128 in a spike].
    #[arg(long)]
    clients: Option<usize>,
    /// Give up after this many seconds [default: 240, plus the incident's length, plus 240 with
    /// AWS faults; in a spike, 2 × payments / limit plus 120].
    #[arg(long)]
    timeout_s: Option<u64>,
}

/// The scenarios of `--scenario`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScenarioArg {
    /// Only the fault rates.
    Faults,
    /// The provider down for `--incident-s`.
    Outage,
    /// The provider degraded for `--incident-s`.
    Brownout,
    /// Every payment at once, the provider limited to `--provider-limit` requests per second.
    Spike,
    /// The provider's faults, and 10 % of the functions' AWS calls failing.
    AwsFaults,
}

/// Options for `up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// Port of the local intake (its front door; the runtime emulator listens 1000 above).
    #[arg(long, default_value_t = 9000)]
    port: u16,
}

/// Runs the main job.
pub async fn demo(args: DemoArgs) -> Result<ExitCode, String> {
    let options = demo_options(&args)?;
    let started = std::time::Instant::now();
    let reconciliation = run(&options).await.map_err(|e| e.to_string())?;
    println!("\n{}", reconciliation.table());
    println!("wall time: {:.1} s (including start-up and shutdown)", started.elapsed().as_secs_f64());
    Ok(if reconciliation.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The pipeline options for `args`, with each scenario's defaults.
fn demo_options(args: &DemoArgs) -> Result<PipelineOptions, String> {
    let window = Duration::from_secs(args.incident_s);
    let scenario = match args.scenario {
        ScenarioArg::Faults | ScenarioArg::AwsFaults => Scenario::Faults,
        ScenarioArg::Outage => Scenario::Outage { window },
        ScenarioArg::Brownout => Scenario::Brownout { window },
        ScenarioArg::Spike => Scenario::Spike { provider_limit: args.provider_limit },
    };
    let incident = matches!(scenario, Scenario::Outage { .. } | Scenario::Brownout { .. });
    let spike = args.scenario == ScenarioArg::Spike;
    let payments = args.payments.unwrap_or(if spike {
        2_000
    } else if incident {
        200
    } else {
        150
    });
    let aws_faults = args.scenario == ScenarioArg::AwsFaults || args.aws_fault_rate.is_some_and(|r| r > 0.0);
    let default_timeout = if spike {
        2 * payments as u64 / u64::from(args.provider_limit.max(1)) + 120
    } else {
        240 + if incident { args.incident_s } else { 0 } + if aws_faults { 240 } else { 0 }
    };
    let no_dead_letters = matches!(args.scenario, ScenarioArg::Outage | ScenarioArg::Spike);
    let mut options = PipelineOptions {
        workload: WorkloadSpec {
            payments,
            seed: args.seed,
            dead_letters: args.dead_letters.unwrap_or(if no_dead_letters { 0 } else { 3 }),
            ..WorkloadSpec::default()
        },
        scenario,
        max_provider_attempts: args.max_provider_attempts,
        max_receive_count: args.max_receive_count,
        port: args.port,
        settle_timeout: Duration::from_secs(args.timeout_s.unwrap_or(default_timeout)),
        kill_processor: args.kill_processor,
        clients: args.clients.unwrap_or(if spike { 128 } else { 8 }),
        ..PipelineOptions::default()
    };
    options.simulator.seed = args.seed;
    let aws_fault_rate = args.aws_fault_rate.unwrap_or(if args.scenario == ScenarioArg::AwsFaults { 0.1 } else { 0.0 });
    if !(0.0..=1.0).contains(&aws_fault_rate) {
        return Err(format!("--aws-fault-rate must be within 0..=1, got {aws_fault_rate}"));
    }
    options.aws_faults = (aws_fault_rate > 0.0).then_some(localenv::aws_faults::FaultPlan {
        rate: aws_fault_rate,
        slow: Duration::from_millis(args.aws_slow_ms),
        seed: args.seed,
    });
    options.simulator.rates = provider_fault_mix(args.fault_rate, spike);
    options.simulator.rates.validate()?;
    Ok(options)
}

/// The provider's faults for `--fault-rate`: the default mix (`PipelineOptions::default`), its
/// every rate scaled so that they sum to `fault_rate`; none in a spike unless asked.
pub(crate) fn provider_fault_mix(fault_rate: Option<f64>, spike: bool) -> provider_simulator::FaultRates {
    let mut rates = PipelineOptions::default().simulator.rates;
    let default_total = rates.total();
    let scale = fault_rate.unwrap_or(if spike { 0.0 } else { default_total }) / default_total;
    for rate in [
        &mut rates.internal_error,
        &mut rates.unavailable,
        &mut rates.rate_limited,
        &mut rates.connection_reset,
        &mut rates.timeout,
        &mut rates.commit_then_timeout,
        &mut rates.latency,
    ] {
        *rate *= scale;
    }
    rates
}

/// Keeps the pipeline up for manual use.
pub async fn up(args: UpArgs) -> Result<ExitCode, String> {
    let mut options = PipelineOptions { port: args.port, ..PipelineOptions::default() };
    options.simulator.rates = provider_simulator::FaultRates::default();
    let running = start(&options).await.map_err(|e| e.to_string())?;
    let url = running.intake_url();
    let body =
        r#"{"amount": 1250, "currency": "EUR", "payment_method": "pm_card_visa", "merchant_reference": "order-1001"}"#;
    println!(
        "The pipeline is up (stack {stack}). Sign requests as an AWS account, as the deployed API wants them \
         (the access key ID is the account, LocalStack's convention):\n\n  \
         curl -i -X POST {url} --aws-sigv4 'aws:amz:us-east-1:execute-api' --user '405608656907:secret' \\\n    \
         -H 'Idempotency-Key: order-1001' -H 'Content-Type: application/json' \\\n    -d '{body}'\n\n  \
         curl -s {url}/order-1001 --aws-sigv4 'aws:amz:us-east-1:execute-api' --user '405608656907:secret'\n\n\
         (or, unsigned, with the local shortcut header -H 'X-Local-Scope: acme').\n\n\
         Operators' tools against this stack:  ./dev ops failures --stack {stack}\n\n\
         The sample events (events/README.md) go straight to a function through the runtime emulator:\n\n  \
         PATH=\"$PWD/.cache/tools/lambda/bin:$PATH\" cargo lambda invoke dlq-consumer --invoke-address 127.0.0.1 \
         --invoke-port {emulator} --data-file events/sqs-dead-letter.json\n\n\
         Provider ledger: {ledger}/ledger   Logs: {logs}\nCtrl-C stops everything.",
        stack = running.stack.name,
        emulator = args.port + localenv::pipeline::EMULATOR_PORT_OFFSET,
        ledger = running.simulator.base_url(),
        logs = running.log_dir.display()
    );
    let _ = tokio::signal::ctrl_c().await;
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
