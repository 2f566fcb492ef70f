//! Operators' tools: find a failure, read why, redrive it, close it; find stuck intakes; show
//! or force the provider's circuit breaker.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use fleet_breaker::dynamodb::DynamoDbBreakerStore;
use fleet_breaker::{BreakerConfig, BreakerPolicy, BreakerStore, Circuit, CircuitBreaker};
use lambda_idempotency::dynamodb::DynamoDbStore;
use lambda_support::clock::{Clock, SystemClock, rfc3339_ms};
use lambda_support::env::Env;
use localenv::operator::StackRedriver;
use localenv::stack::Stack;
use payments_core::failures::dynamodb::DynamoDbFailureStore;
use payments_core::failures::redrive::Redriven;
use payments_core::failures::{FailureRecord, FailureState, FailureStore};

/// The operators' tools, against a deployed stack: in LocalStack (`--target local`, the default)
/// or in AWS (`--target aws`, with the caller's own credentials and profile).
#[derive(clap::Args)]
pub struct Ops {
    /// Where the stack is: `local` (LocalStack, `AWS_ENDPOINT_URL` or 127.0.0.1:$LOCALSTACK_PORT)
    /// or `aws` (the standard AWS environment: `AWS_PROFILE` or `--profile`, `AWS_REGION`, SSO).
    #[arg(long, value_enum, env = "PAYMENTS_TARGET", default_value_t = Target::Local, global = true)]
    target: Target,
    /// The AWS profile to use with `--target aws`.
    #[arg(long, env = "AWS_PROFILE", global = true)]
    profile: Option<String>,
    /// The stack's name.
    #[arg(long, env = "PAYMENTS_STACK", global = true)]
    stack: Option<String>,
    /// The provider's API, asked before a redrive whether it already charged; by default the
    /// stack's own `ProviderBaseUrl`. Its API key always comes from the stack's secret.
    #[arg(long, env = "PROVIDER_BASE_URL", global = true)]
    provider_url: Option<String>,
    /// How long the provider remembers an idempotency key: past it, a payment whose outcome is
    /// unknown is not re-sent (Stripe keeps keys at least 24 hours).
    #[arg(long, env = "PROVIDER_KEY_WINDOW_HOURS", default_value_t = 24, global = true)]
    provider_key_window_hours: u64,
    #[command(subcommand)]
    command: OpsCommand,
}

/// The operators' commands.
#[derive(Subcommand)]
pub enum OpsCommand {
    /// List failure records (open ones unless --all).
    Failures {
        #[arg(long)]
        all: bool,
    },
    /// Show one failure record in full, with its original body.
    Show { partition: String, message_id: String },
    /// Ask the provider, then re-enqueue one record's original body (its idempotency key
    /// prevents a second execution), marking the record redriven; a payment found charged is completed
    /// instead, not re-sent.
    Redrive {
        partition: String,
        message_id: String,
        /// Also redrive a poison record (it will fail the same way unless it was fixed upstream).
        #[arg(long)]
        force: bool,
    },
    /// Redrive every open dead-letter record. Dry run unless --execute.
    RedriveOpen {
        #[arg(long)]
        execute: bool,
    },
    /// Move everything still in the DLQ back to the payments queue (SQS StartMessageMoveTask).
    /// Dry run unless --execute.
    RedriveDlq {
        #[arg(long)]
        execute: bool,
    },
    /// Close a record without redriving it.
    Close {
        partition: String,
        message_id: String,
        #[arg(long)]
        note: String,
    },
    /// The provider's circuit breaker: show it, or force it open (no provider calls, payments
    /// wait without spending their budget) or closed (calls resume at once).
    Circuit {
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
    /// Runs the completer's sweep now (it runs on a schedule anyway): abandoned acceptances are
    /// enqueued, abandoned payments re-enqueued or left to an operator when dead-lettered.
    Complete {
        /// Quiet period before a processor record counts as abandoned (the deployed function's
        /// `RECOVERY_QUIET_SECONDS`).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        quiet: Duration,
    },
    /// Payments accepted but possibly never enqueued: intake records still IN_PROGRESS long
    /// after their lease (a crash between claim and SendMessage that no client retry fixed).
    /// The completer finishes those it can; this lists every one, those it could not included
    /// (accepted before it existed). It scans the table: an operator's query.
    StuckIntake {
        /// How long past its lease a record must be.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        older_than: Duration,
    },
}

/// Where the operators' tools look for the stack.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Target {
    /// LocalStack on this machine.
    Local,
    /// AWS, with the caller's credentials.
    Aws,
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

/// The SDK configuration for `target`: LocalStack's endpoint and dummy credentials, or the
/// standard AWS chain (environment, `profile`, SSO, instance role), with the project's pinned
/// behaviour, retries and timeouts either way.
async fn sdk_for(target: Target, profile: Option<&str>) -> aws_config::SdkConfig {
    let timeouts = lambda_support::aws::SdkTimeouts::from_env(&Env::process()).unwrap_or_default();
    let mut loader = lambda_support::aws::loader(timeouts);
    match target {
        Target::Local => {
            let port = std::env::var("LOCALSTACK_PORT").unwrap_or_else(|_| "4566".into());
            let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| format!("http://127.0.0.1:{port}"));
            let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
            loader = loader
                .endpoint_url(endpoint)
                .region(aws_config::Region::new(region))
                .credentials_provider(aws_credential_types::Credentials::new("test", "test", None, None, "localstack"));
        }
        Target::Aws => {
            if let Some(profile) = profile {
                loader = loader.profile_name(profile);
            }
        }
    }
    loader.load().await
}

/// Runs an operator command.
pub async fn run(ops: Ops) -> Result<ExitCode, String> {
    let sdk = sdk_for(ops.target, ops.profile.as_deref()).await;
    let name = ops.stack.clone().ok_or("--stack (or PAYMENTS_STACK) names the stack")?;
    let stack = localenv::stack::describe(&sdk, &name).await.map_err(|e| match ops.target {
        Target::Local => format!("{e} (looking in LocalStack; add --target aws for a stack deployed to AWS)"),
        Target::Aws => e.to_string(),
    })?;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let failures = DynamoDbFailureStore::new(dynamodb.clone(), stack.failures_table());
    let now = SystemClock.now_ms();
    match ops.command {
        OpsCommand::Failures { all } => list(&failures.list(!all).await.map_err(|e| e.to_string())?),
        OpsCommand::Show { ref partition, ref message_id } => {
            let record = failures.get(partition, message_id).await.map_err(|e| e.to_string())?;
            show(&record.ok_or("no such failure record")?);
        }
        OpsCommand::Redrive { ref partition, ref message_id, force } => {
            let done = redriver(&ops, &sdk, &stack)?
                .redrive_record(partition, message_id, force, now)
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", describe(&done, true));
        }
        OpsCommand::RedriveOpen { execute } => {
            let done = redriver(&ops, &sdk, &stack)?.redrive_open(!execute, now).await.map_err(|e| e.to_string())?;
            for d in &done {
                println!("{}", describe(d, execute));
            }
            println!("{} record(s){}", done.len(), if execute { "" } else { " (dry run: add --execute)" });
        }
        OpsCommand::RedriveDlq { execute } => {
            let (waiting, task) =
                localenv::operator::dead_letter_move(&sdk, &stack).run(!execute).await.map_err(|e| e.to_string())?;
            match task {
                Some(handle) => println!("moving {waiting} message(s) back; task {handle}"),
                None => println!(
                    "{waiting} message(s) in the DLQ{}",
                    if execute { "" } else { " (dry run: add --execute)" }
                ),
            }
        }
        OpsCommand::Close { ref partition, ref message_id, ref note } => {
            redriver(&ops, &sdk, &stack)?.close(partition, message_id, note, now).await.map_err(|e| e.to_string())?;
            println!("closed");
        }
        OpsCommand::Circuit { action, for_, ref provider } => {
            circuit(dynamodb, stack.idempotency_table(), provider, action, for_).await?;
        }
        OpsCommand::Complete { quiet } => complete_now(&sdk, &stack, quiet, now).await?,
        OpsCommand::StuckIntake { older_than } => {
            stuck_intake(DynamoDbStore::new(dynamodb, stack.idempotency_table()), older_than, now).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the completer's sweep now, as the deployed function would with quiet period `quiet`, and
/// prints what it did.
async fn complete_now(sdk: &aws_config::SdkConfig, stack: &Stack, quiet: Duration, now: i64) -> Result<(), String> {
    let quiet = quiet.as_secs().to_string();
    let vars = [
        ("IDEMPOTENCY_TABLE", stack.idempotency_table()),
        ("FAILURES_TABLE", stack.failures_table()),
        ("PAYMENTS_QUEUE_URL", stack.queue_url()),
        ("RECOVERY_QUIET_SECONDS", quiet.as_str()),
    ];
    let env = Env::from_lookup(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned()));
    let config = completer::CompleterConfig::from_env(&env).map_err(|e| e.to_string())?;
    let sweep = completer::build(&config, sdk).sweep(now + 60_000).await;
    println!("{}", serde_json::to_string_pretty(&sweep).map_err(|e| e.to_string())?);
    Ok(())
}

/// The redrive tool over `stack`, asking its provider (the stack's `ProviderBaseUrl` unless
/// `--provider-url` says otherwise) with the API key from the stack's secret.
fn redriver(ops: &Ops, sdk: &aws_config::SdkConfig, stack: &Stack) -> Result<StackRedriver, String> {
    let provider = localenv::operator::provider(sdk, stack, ops.provider_url.as_deref()).map_err(|e| e.to_string())?;
    let key_window = Duration::from_secs(ops.provider_key_window_hours * 3600);
    Ok(localenv::operator::redriver(sdk, stack, provider, key_window))
}

fn describe(done: &Redriven, executed: bool) -> String {
    match (&done.found_charge, &done.new_message_id) {
        (Some(charge), _) => {
            format!("{} {}: already charged ({charge}); completed, not re-sent", done.partition, done.message_id)
        }
        (None, Some(id)) => format!("{} {}: redriven as message {id}", done.partition, done.message_id),
        (None, None) => {
            format!("{} {}: {}", done.partition, done.message_id, if executed { "done" } else { "would redrive" })
        }
    }
}

fn list(records: &[FailureRecord]) {
    println!(
        "{:<24} {:<10} {:<28} {:<6} {:<9} {:<40} message id",
        "recorded", "kind", "class", "recv", "state", "payment"
    );
    for r in records {
        let state = match (&r.state, &r.redriven) {
            (FailureState::Open, None) => "OPEN",
            (FailureState::Open, Some(_)) => "REDRIVEN",
            (FailureState::Closed { .. }, _) => "CLOSED",
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

fn show(r: &FailureRecord) {
    let time = |t: Option<i64>| t.map(rfc3339_ms).unwrap_or_else(|| "-".into());
    println!("payment:        {}", r.partition);
    println!("message id:     {}", r.message_id);
    println!("kind / class:   {} / {}", r.kind.as_str(), r.failure_class);
    println!("last error:     {}", r.last_error.as_deref().unwrap_or("-"));
    println!("receive count:  {}", r.receive_count);
    println!("first attempt:  {}", time(r.first_attempt_at_ms));
    println!("last attempt:   {}", time(r.last_attempt_at_ms));
    println!("source queue:   {}", r.source_queue);
    println!("recorded at:    {}", rfc3339_ms(r.recorded_at_ms));
    println!("state:          {:?}", r.state);
    if let Some(redrive) = &r.redriven {
        println!(
            "redriven:       {} as message {} (open until the payment settles)",
            rfc3339_ms(redrive.at_ms),
            redrive.message_id
        );
    }
    println!("body (redacted for reading; a redrive sends the message the intake accepted):\n{}", r.body);
}

async fn stuck_intake(store: DynamoDbStore, older_than: Duration, now: i64) -> Result<(), String> {
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
    Ok(())
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
