//! Operators' tools: find a failure, read why, redrive it, resolve it; find stuck intakes.

use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use clap::Subcommand;
use payments_core::breaker::dynamodb::DynamoDbBreakerStore;
use payments_core::breaker::{BreakerConfig, BreakerPolicy, BreakerStore, Circuit, CircuitBreaker};
use payments_core::clock::{Clock, SystemClock, rfc3339_ms};
use payments_core::failures::dynamodb::DynamoDbFailureStore;
use payments_core::failures::redrive::Redriver;
use payments_core::failures::{FailureState, FailureStore};
use payments_core::idempotency::dynamodb::DynamoDbStore;

/// The operators' commands. `--stack` names the deployed stack (LocalStack or AWS, wherever the
/// AWS environment points); default `$PAYMENTS_STACK`.
#[derive(Subcommand)]
pub enum OpsCommand {
    /// List failure records (open ones unless --all).
    Failures {
        #[arg(long, env = "PAYMENTS_STACK")]
        stack: String,
        #[arg(long)]
        all: bool,
    },
    /// Show one failure record in full, with its original body.
    Show {
        #[arg(long, env = "PAYMENTS_STACK")]
        stack: String,
        partition: String,
        message_id: String,
    },
    /// Re-enqueue one record's original body (its idempotency key prevents a second execution)
    /// and mark it resolved.
    Redrive {
        #[arg(long, env = "PAYMENTS_STACK")]
        stack: String,
        partition: String,
        message_id: String,
        /// Also redrive a poison record (it will fail the same way unless it was fixed upstream).
        #[arg(long)]
        force: bool,
    },
    /// Redrive every open dead-letter record. Dry run unless --execute.
    RedriveOpen {
        #[arg(long, env = "PAYMENTS_STACK")]
        stack: String,
        #[arg(long)]
        execute: bool,
    },
    /// Move everything still in the DLQ back to the payments queue (SQS StartMessageMoveTask).
    /// Dry run unless --execute.
    RedriveDlq {
        #[arg(long, env = "PAYMENTS_STACK")]
        stack: String,
        #[arg(long)]
        execute: bool,
    },
    /// Mark a record resolved without redriving it.
    Resolve {
        #[arg(long, env = "PAYMENTS_STACK")]
        stack: String,
        partition: String,
        message_id: String,
        #[arg(long)]
        note: String,
    },
    /// The provider's circuit breaker: show it, or force it open (no provider calls, payments
    /// wait without spending their budget) or closed (calls resume at once).
    Circuit {
        #[arg(long, env = "PAYMENTS_STACK")]
        stack: String,
        /// `show`, `open` or `close`.
        #[arg(value_enum, default_value_t = CircuitAction::Show)]
        action: CircuitAction,
        /// How long a forced open lasts before the breaker probes again.
        #[arg(long = "for", default_value = "10m", value_parser = humantime::parse_duration)]
        for_: Duration,
        /// The breaker's name (the processor's `PROVIDER_NAME`).
        #[arg(long, default_value = "payment-provider")]
        provider: String,
    },
    /// Payments accepted but possibly never enqueued: intake records still IN_PROGRESS long
    /// after their lease (a crash between claim and SendMessage that no client retry fixed).
    StuckIntake {
        #[arg(long, env = "PAYMENTS_STACK")]
        stack: String,
        /// How long past its lease a record must be.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        older_than: Duration,
    },
}

/// Runs an operator command.
pub async fn run(command: OpsCommand) -> Result<ExitCode, String> {
    let sdk = payments_core::aws::load_config().await;
    let stack_name = match &command {
        OpsCommand::Failures { stack, .. }
        | OpsCommand::Show { stack, .. }
        | OpsCommand::Redrive { stack, .. }
        | OpsCommand::RedriveOpen { stack, .. }
        | OpsCommand::RedriveDlq { stack, .. }
        | OpsCommand::Resolve { stack, .. }
        | OpsCommand::StuckIntake { stack, .. }
        | OpsCommand::Circuit { stack, .. } => stack.clone(),
    };
    let stack = localenv::stack::describe(&sdk, &stack_name).await.map_err(|e| e.to_string())?;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let ops = Redriver {
        failures: DynamoDbFailureStore::new(dynamodb.clone(), stack.failures_table()),
        sqs: aws_sdk_sqs::Client::new(&sdk),
        queue_url: stack.queue_url().to_owned(),
        queue_arn: stack.queue_arn().to_owned(),
        dlq_arn: stack.dlq_arn().to_owned(),
    };
    let now = SystemClock.now_ms();
    match command {
        OpsCommand::Failures { all, .. } => {
            let records = ops.failures.list(!all).await.map_err(|e| e.to_string())?;
            println!(
                "{:<24} {:<10} {:<28} {:<6} {:<9} {:<40} message id",
                "recorded", "kind", "class", "recv", "state", "payment"
            );
            for r in &records {
                let state = match &r.state {
                    FailureState::Open => "OPEN",
                    FailureState::Resolved { .. } => "RESOLVED",
                };
                println!(
                    "{:<24} {:<10} {:<28} {:<6} {:<9} {:<40} {}",
                    rfc3339_ms(r.recorded_at_ms),
                    r.kind.as_str(),
                    r.failure_class,
                    r.receive_count,
                    state,
                    r.partition,
                    r.message_id
                );
            }
            println!("{} record(s)", records.len());
        }
        OpsCommand::Show { partition, message_id, .. } => {
            let r = ops
                .failures
                .get(&partition, &message_id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no such failure record")?;
            println!("payment:        {}", r.partition);
            println!("message id:     {}", r.message_id);
            println!("kind / class:   {} / {}", r.kind.as_str(), r.failure_class);
            println!("last error:     {}", r.last_error.as_deref().unwrap_or("-"));
            println!("receive count:  {}", r.receive_count);
            println!("first attempt:  {}", r.first_attempt_at_ms.map(rfc3339_ms).unwrap_or_else(|| "-".into()));
            println!("last attempt:   {}", r.last_attempt_at_ms.map(rfc3339_ms).unwrap_or_else(|| "-".into()));
            println!("source queue:   {}", r.source_queue);
            println!("recorded at:    {}", rfc3339_ms(r.recorded_at_ms));
            println!("state:          {:?}", r.state);
            println!("body:\n{}", r.body);
        }
        OpsCommand::Redrive { partition, message_id, force, .. } => {
            let done = ops.redrive_record(&partition, &message_id, force, now).await.map_err(|e| e.to_string())?;
            println!("redriven as message {}", done.new_message_id.unwrap_or_default());
        }
        OpsCommand::RedriveOpen { execute, .. } => {
            let done = ops.redrive_open(!execute, now).await.map_err(|e| e.to_string())?;
            for d in &done {
                println!("{} {} {}", if execute { "redriven" } else { "would redrive" }, d.partition, d.message_id);
            }
            println!("{} record(s){}", done.len(), if execute { "" } else { " (dry run: add --execute)" });
        }
        OpsCommand::RedriveDlq { execute, .. } => {
            let (waiting, task) = ops.move_dlq(!execute).await.map_err(|e| e.to_string())?;
            match task {
                Some(handle) => println!("moving {waiting} message(s) back; task {handle}"),
                None => println!(
                    "{waiting} message(s) in the DLQ{}",
                    if execute { "" } else { " (dry run: add --execute)" }
                ),
            }
        }
        OpsCommand::Resolve { partition, message_id, note, .. } => {
            ops.resolve(&partition, &message_id, &note, now).await.map_err(|e| e.to_string())?;
            println!("resolved");
        }
        OpsCommand::Circuit { action, for_, provider, .. } => {
            circuit(dynamodb, stack.idempotency_table(), &provider, action, for_).await?;
        }
        OpsCommand::StuckIntake { older_than, .. } => {
            let store = DynamoDbStore::new(dynamodb, stack.idempotency_table());
            let cutoff = now - i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
            let stuck = store.stale_in_progress("intake", cutoff).await.map_err(|e| e.to_string())?;
            for r in &stuck {
                println!(
                    "{}  first claimed {}  lease ended {}  attempts {}",
                    r.partition_key,
                    rfc3339_ms(r.created_at_ms),
                    rfc3339_ms(r.lease_until_ms),
                    r.attempts
                );
            }
            println!("{} stuck intake record(s)", stuck.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `ops circuit` does.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CircuitAction {
    /// Print the breaker's state.
    Show,
    /// Force it open for `--for`.
    Open,
    /// Force it closed.
    Close,
}

async fn circuit(
    dynamodb: aws_sdk_dynamodb::Client,
    table: &str,
    provider: &str,
    action: CircuitAction,
    for_: Duration,
) -> Result<(), String> {
    let config = BreakerConfig {
        name: provider.to_owned(),
        policy: BreakerPolicy::default(),
        cache_for: Duration::ZERO,
        half_open_wait: Duration::ZERO,
    };
    let breaker = CircuitBreaker::new(DynamoDbBreakerStore::new(dynamodb, table), config, Arc::new(SystemClock));
    let state = match action {
        CircuitAction::Show => breaker.store().read(provider).await.map_err(|e| e.to_string())?,
        CircuitAction::Open => breaker.force(Circuit::Open, for_).await.map_err(|e| e.to_string())?,
        CircuitAction::Close => breaker.force(Circuit::Closed, Duration::ZERO).await.map_err(|e| e.to_string())?,
    };
    let now = SystemClock.now_ms();
    println!("provider:         {provider}");
    println!("phase:            {}", state.phase(now).as_str());
    if state.circuit == Circuit::Open {
        println!("open since:       {}", rfc3339_ms(state.opened_at_ms));
        println!("next probe after: {}", rfc3339_ms(state.open_until_ms));
        println!("opened in a row:  {}", state.opened);
        println!("probe successes:  {}", state.probe_successes);
    } else {
        println!("recent failures:  {}", state.failures);
    }
    Ok(())
}
