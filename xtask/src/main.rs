//! `cargo xtask …`: the local pipeline (the main job), the operators' failure tools, and the
//! benchmark. See `cargo xtask --help`.

mod bench;
mod ops;
mod pipeline;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Safe asynchronous payments on AWS Lambda: project commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole pipeline locally, end to end, under faults; prints a reconciliation and exits
    /// non-zero if any payment was charged twice or lost.
    Demo(pipeline::DemoArgs),
    /// Brings the pipeline up (LocalStack, functions, pollers, simulator) and keeps it running
    /// for manual use (curl) until Ctrl-C.
    Up(pipeline::UpArgs),
    /// Operators' tools over a deployed stack: failure records, redrive, stuck intakes, the
    /// provider's circuit breaker.
    Ops(ops::Ops),
    /// The processor's cost per message against Powertools for AWS Lambda (Python).
    Bench(bench::BenchArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => pipeline::demo(args).await,
        Command::Up(args) => pipeline::up(args).await,
        Command::Ops(command) => ops::run(command).await,
        Command::Bench(args) => bench::bench(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod docs;
