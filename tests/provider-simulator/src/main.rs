//! `provider-simulator`: a Stripe-style payment provider on loopback for local runs and tests.

use clap::Parser;
use provider_simulator::{Capacity, FaultRates, SimConfig, Simulator};

/// A payment provider that honours Idempotency-Key, keeps a ledger (GET /ledger) and injects
/// faults deterministically under a seed.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Seed of the rate-based fault draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Probability of a 500 per request.
    #[arg(long, default_value_t = 0.0)]
    rate_500: f64,
    /// Probability of a 503 per request.
    #[arg(long, default_value_t = 0.0)]
    rate_503: f64,
    /// Probability of a 429 per request.
    #[arg(long, default_value_t = 0.0)]
    rate_429: f64,
    /// Probability of a dropped connection per request.
    #[arg(long, default_value_t = 0.0)]
    rate_reset: f64,
    /// Probability of commit-then-timeout per request.
    #[arg(long, default_value_t = 0.0)]
    rate_commit_timeout: f64,
    /// Probability of extra latency per request.
    #[arg(long, default_value_t = 0.0)]
    rate_latency: f64,
    /// Probability of no answer in time (nothing charged) per request.
    #[arg(long, default_value_t = 0.0)]
    rate_timeout: f64,
    /// Extra latency, milliseconds.
    #[arg(long, default_value_t = 200)]
    latency_ms: u64,
    /// How long a commit-then-timeout answer is held back, milliseconds.
    #[arg(long, default_value_t = 15_000)]
    commit_delay_ms: u64,
    /// Requests admitted per sliding second, beyond which 429 with Retry-After (0: unlimited).
    #[arg(long, default_value_t = 0)]
    rate_limit: u32,
    /// Requests served at once, beyond which 429 (0: unlimited).
    #[arg(long, default_value_t = 0)]
    max_concurrent: u32,
    /// The API key requests must carry as a bearer token (unset: none required).
    #[arg(long, env = "SIMULATOR_API_KEY")]
    api_key: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let config = SimConfig {
        seed: args.seed,
        rates: FaultRates {
            internal_error: args.rate_500,
            unavailable: args.rate_503,
            rate_limited: args.rate_429,
            connection_reset: args.rate_reset,
            commit_then_timeout: args.rate_commit_timeout,
            latency: args.rate_latency,
            timeout: args.rate_timeout,
        },
        latency_ms: args.latency_ms,
        commit_delay_ms: args.commit_delay_ms,
        capacity: Capacity { rate_per_s: args.rate_limit, max_concurrent: args.max_concurrent },
        api_key: args.api_key,
    };
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let simulator = Simulator::serve(listener, config)?;
    // The first line on stdout tells a supervising process where to connect.
    println!("listening on {}", simulator.base_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
