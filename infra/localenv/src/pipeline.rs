//! The main job: the whole pipeline on this machine, end to end, under faults. LocalStack with
//! the template's resources, the three functions under the runtime emulator, pollers standing in
//! for the event source mappings, the provider simulator; then a workload through the intake over
//! HTTP, progress while the system settles, and a reconciliation that fails the run if any
//! payment was charged twice or lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use lambda_idempotency::dynamodb::DynamoDbStore;
use lambda_idempotency::{Idempotency, IdempotencyConfig, IdempotencyKey, PayloadHash, Recovery, Scope};
use lambda_support::clock::rfc3339_ms;
use payments_core::failures::{FailureRecord, FailureState};
use payments_core::payment::envelope::{SCHEMA_VERSION, parse_strict};
use payments_core::payment::{PaymentMessage, PaymentStatus, PaymentView, intake_key};
use provider_simulator::{Capacity, LedgerSnapshot, SimConfig, Simulator};

use crate::aws_proxy::AwsGateway;
use crate::cache_dir;
use crate::emf_log::MetricTotals;
use crate::event_source::{PollerConfig, PollerStats, ScheduleStats, queue_depth, spawn_poller, spawn_schedule};
use crate::front::FrontDoor;
use crate::functions::{Emulator, FunctionProcess};
use crate::load::{ProviderLoad, sample_depth};
use crate::localstack::OwnedLocalStack;
use crate::reconcile::{Books, check_metrics, check_money};
pub use crate::reconcile::{IncidentFigures, Permissions, Reconciliation};
use crate::stack::{Stack, deploy, unique_name};
use crate::workload::{Plan, Submission, WorkloadSpec, plan, submit};

/// A provider incident over a window of the run, driven through the simulator's runtime
/// configuration (`PUT /_sim/config`), on top of the run's own fault rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Only the run's fault rates.
    Faults,
    /// The provider is down for the window: half its answers 503, half no answer in time.
    Outage {
        /// How long.
        window: Duration,
    },
    /// The provider is degraded for the window: 30 % slow answers, 15 % timeouts and 15 %
    /// commit-then-timeout (charged, answer lost).
    Brownout {
        /// How long.
        window: Duration,
    },
    /// Every payment at once, against a provider that serves `provider_limit` requests per
    /// second (429 beyond) for the whole run; the processor is paced at 90 % of it.
    Spike {
        /// The provider's rate limit (0: unlimited, and the processor unpaced).
        provider_limit: u32,
    },
}

impl Scenario {
    /// `faults`, `outage` or `brownout`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Faults => "faults",
            Self::Outage { .. } => "outage",
            Self::Brownout { .. } => "brownout",
            Self::Spike { .. } => "spike",
        }
    }

    fn window(&self) -> Option<Duration> {
        match self {
            Self::Faults | Self::Spike { .. } => None,
            Self::Outage { window } | Self::Brownout { window } => Some(*window),
        }
    }

    /// The provider's capacity for the whole run: the spike's limit, else none.
    fn provider_capacity(&self) -> Capacity {
        match self {
            Self::Spike { provider_limit } => Capacity { rate_per_s: *provider_limit, max_concurrent: 0 },
            _ => Capacity::default(),
        }
    }

    /// `PROVIDER_RATE_LIMIT` for the processor: 90 % of the spike's limit (headroom for the
    /// jitter of requests on their way), else unpaced.
    fn processor_pace(&self) -> Option<f64> {
        match self {
            Self::Spike { provider_limit } if *provider_limit > 0 => Some(0.9 * f64::from(*provider_limit)),
            _ => None,
        }
    }

    /// The simulator's configuration during the incident.
    fn incident_config(&self, normal: &SimConfig) -> SimConfig {
        let rates = match self {
            Self::Faults | Self::Spike { .. } => normal.rates,
            Self::Outage { .. } => {
                provider_simulator::FaultRates { unavailable: 0.5, timeout: 0.5, ..Default::default() }
            }
            Self::Brownout { .. } => provider_simulator::FaultRates {
                latency: 0.3,
                timeout: 0.15,
                commit_then_timeout: 0.15,
                ..Default::default()
            },
        };
        SimConfig { rates, ..normal.clone() }
    }
}

/// Records the local processor runs at once (`BATCH_CONCURRENCY`): the outage scenario's bound
/// on provider requests during an outage is computed from it.
pub const PROCESSOR_CONCURRENCY: u64 = 10;

/// Local runs: how long after an acceptance's lease ends, unfinished, the completer takes it
/// (`RECOVERY_GRACE_SECONDS`; 120 s in the template).
const LOCAL_RECOVERY_GRACE_S: i64 = 3;

/// Local runs: how often the completer runs (`rate(1 minute)` in the template).
const COMPLETER_EVERY: Duration = Duration::from_secs(3);

/// The account LocalStack puts everything in (its dummy credentials'), as ARNs name it.
pub const LOCALSTACK_ACCOUNT: &str = "000000000000";

/// The emulator listens this far above the pipeline's port, behind the front door.
pub const EMULATOR_PORT_OFFSET: u16 = 1000;

/// The intake's lease (`INTAKE_LEASE_MS`, default 10 s): an abandoned acceptance's lease ends then.
const INTAKE_LEASE_MS: i64 = 10_000;

/// How to run.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// The workload.
    pub workload: WorkloadSpec,
    /// Provider faults by rate (per-payment scripts come from the workload).
    pub simulator: SimConfig,
    /// A provider incident during the run, if any.
    pub scenario: Scenario,
    /// Failed provider attempts before the processor gives a payment up.
    pub max_provider_attempts: u32,
    /// Deliveries before SQS moves a message to the DLQ (the safety net for crashes: well above
    /// the receives an outage causes, since waiting for the provider spends none of the budget).
    pub max_receive_count: u32,
    /// Port of the local intake (its front door; the runtime emulator listens 1000 above).
    pub port: u16,
    /// Give up if not settled within this.
    pub settle_timeout: Duration,
    /// SIGKILL the processor in the middle of a batch, then start it again.
    pub kill_processor: bool,
    /// Print progress lines.
    pub progress: bool,
    /// Clients submitting at once.
    pub clients: usize,
    /// The provider expects another key than the stack's secret holds (a key rotated at the
    /// provider but not in the secret): every charge is refused with 401.
    pub provider_refuses_key: bool,
    /// Faults of the functions' own AWS calls, if any.
    pub aws_faults: Option<crate::aws_faults::FaultPlan>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            workload: WorkloadSpec::default(),
            simulator: SimConfig {
                seed: 7,
                rates: provider_simulator::FaultRates {
                    internal_error: 0.03,
                    unavailable: 0.03,
                    rate_limited: 0.02,
                    connection_reset: 0.02,
                    commit_then_timeout: 0.02,
                    latency: 0.05,
                    timeout: 0.0,
                },
                latency_ms: 300,
                commit_delay_ms: 2_500,
                capacity: Capacity::default(),
                api_key: None,
            },
            scenario: Scenario::Faults,
            max_provider_attempts: 5,
            max_receive_count: 50,
            port: 9400,
            settle_timeout: Duration::from_secs(240),
            kill_processor: false,
            progress: true,
            clients: 8,
            provider_refuses_key: false,
            aws_faults: None,
        }
    }
}

/// Why the pipeline could not run (as opposed to ran and found a violation).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// LocalStack.
    #[error(transparent)]
    LocalStack(#[from] crate::localstack::LocalStackError),
    /// The template.
    #[error(transparent)]
    Stack(#[from] crate::stack::StackError),
    /// The functions.
    #[error(transparent)]
    Functions(#[from] crate::functions::FunctionsError),
    /// The simulator.
    #[error("provider simulator: {0}")]
    Simulator(std::io::Error),
    /// It did not settle in time.
    #[error("not settled after {0:?}: {1}")]
    NotSettled(Duration, String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// What is running during a pipeline run; `shutdown` stops all of it.
pub struct Running {
    /// The deployed stack.
    pub stack: Stack,
    /// The provider simulator.
    pub simulator: Simulator,
    /// The runtime emulator.
    pub emulator: Emulator,
    /// The intake's front door (what clients call).
    pub front: FrontDoor,
    /// Between the functions and LocalStack: records every AWS call each makes.
    pub aws: AwsGateway,
    /// The function processes, by name.
    pub functions: HashMap<String, FunctionProcess>,
    /// The event source mappings' and the schedule's stand-ins.
    pub pollers: Pollers,
    /// EMF totals from every function's logs.
    pub metrics: MetricTotals,
    /// Where the logs go.
    pub log_dir: PathBuf,
    /// The provider's API key (from the stack's secret; the simulator checks it).
    provider_key: String,
    sdk: aws_config::SdkConfig,
    localstack: OwnedLocalStack,
}

/// The stand-ins for the event source mappings and the completer's schedule.
pub struct Pollers {
    /// Payments-queue poller statistics.
    pub payments: Arc<PollerStats>,
    /// DLQ poller statistics.
    pub dead_letters: Arc<PollerStats>,
    /// Completer runs.
    pub completer_runs: Arc<ScheduleStats>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// The SDK configuration of the run (LocalStack, as the harness reaches it: not through the
    /// functions' recording listeners).
    pub fn sdk(&self) -> &aws_config::SdkConfig {
        &self.sdk
    }

    /// The intake's `/payments` URL.
    pub fn intake_url(&self) -> String {
        format!("{}/payments", self.front.url())
    }

    /// Stops pollers, functions, emulator, simulator, and LocalStack if it was started here.
    pub async fn shutdown(self) {
        self.pollers.stop.store(true, Relaxed);
        for poller in self.pollers.tasks {
            let _ = poller.await;
        }
        for function in self.functions.values() {
            function.kill().await;
        }
        self.emulator.stop().await;
        drop(self.simulator);
        self.localstack.stop();
    }
}

/// Brings everything up: LocalStack (started if needed), the simulator, the stack, the AWS
/// gateway, the functions and the pollers.
pub async fn start(options: &PipelineOptions) -> Result<Running, PipelineError> {
    let localstack = OwnedLocalStack::acquire()?;
    let sdk = lambda_support::aws::load_config().await;
    let name = unique_name("pipeline");
    // The simulator first: the stack is deployed with it as its provider, so that the operators'
    // tools find it through the stack, as they find the real provider of a deployed one.
    let simulator =
        Simulator::start(SimConfig { capacity: options.scenario.provider_capacity(), ..options.simulator.clone() })
            .await
            .map_err(PipelineError::Simulator)?;
    let receive = options.max_receive_count.to_string();
    let overrides = [
        ("MaxReceiveCount", receive.as_str()),
        ("ProcessorTimeoutSeconds", "10"),
        ("ProviderTimeoutMillis", "1500"),
        ("ProviderBaseUrl", &simulator.base_url()),
    ];
    let stack = deploy(&sdk, &name, &overrides).await?;
    let provider_key = require_key(options, &sdk, &stack, &simulator).await?;
    let log_dir = cache_dir().join("pipeline").join(&name);
    std::fs::create_dir_all(&log_dir).map_err(|e| PipelineError::Other(format!("log dir: {e}")))?;

    crate::functions::build().await?;
    let aws = start_aws_gateway(&sdk, options.aws_faults).await?;
    // Clients reach the intake through the front door on `port`; the emulator sits behind it.
    let emulator_port = options.port + EMULATOR_PORT_OFFSET;
    let emulator = Emulator::start(emulator_port, &log_dir.join("emulator.log")).await?;
    let front = FrontDoor::start(options.port, emulator.invoke_url("intake"))
        .await
        .map_err(|e| PipelineError::Other(format!("front door on port {}: {e}", options.port)))?;
    let metrics = MetricTotals::default();
    let envs = function_envs(options, &stack, &simulator.base_url(), &aws);
    let functions = start_functions(envs, emulator_port, &log_dir, &metrics).await?;
    let pollers = start_pollers(&sdk, &stack, &emulator, &aws);
    Ok(Running {
        stack,
        simulator,
        emulator,
        front,
        aws,
        functions,
        metrics,
        log_dir,
        provider_key,
        sdk,
        localstack,
        pollers,
    })
}

/// Every function's AWS calls go through a listener of its own, which records them (and injects
/// the run's AWS faults).
async fn start_aws_gateway(
    sdk: &aws_config::SdkConfig,
    faults: Option<crate::aws_faults::FaultPlan>,
) -> Result<AwsGateway, PipelineError> {
    let upstream = sdk.endpoint_url().unwrap_or("http://127.0.0.1:4566").trim_end_matches('/').to_owned();
    let region = sdk.region().map_or("us-east-1".to_owned(), |r| r.to_string());
    AwsGateway::start(&upstream, &crate::functions::FUNCTIONS, &region, LOCALSTACK_ACCOUNT, faults)
        .await
        .map_err(|e| PipelineError::Other(format!("AWS gateway: {e}")))
}

/// The event source mappings' stand-ins (each polling through its function's AWS listener, as a
/// mapping polls with its function's role) and the completer's schedule.
fn start_pollers(sdk: &aws_config::SdkConfig, stack: &Stack, emulator: &Emulator, aws: &AwsGateway) -> Pollers {
    let stop = Arc::new(AtomicBool::new(false));
    let completer_runs = Arc::new(ScheduleStats::default());
    let (payments, dead_letters) = (Arc::new(PollerStats::default()), Arc::new(PollerStats::default()));
    // Set on the client's own configuration: the environment's AWS_ENDPOINT_URL would win over
    // an endpoint set on the shared one.
    let sqs_of = |function: &str| {
        aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(sdk).endpoint_url(aws.endpoint(function)).build(),
        )
    };
    let tasks = vec![
        spawn_poller(
            sqs_of("processor"),
            poller_config(stack.queue_url(), stack.queue_arn(), emulator.invoke_url("processor")),
            payments.clone(),
            stop.clone(),
        ),
        spawn_poller(
            sqs_of("dlq-consumer"),
            poller_config(stack.dlq_url(), stack.dlq_arn(), emulator.invoke_url("dlq-consumer")),
            dead_letters.clone(),
            stop.clone(),
        ),
        spawn_schedule(emulator.invoke_url("completer"), COMPLETER_EVERY, completer_runs.clone(), stop.clone()),
    ];
    Pollers { payments, dead_letters, completer_runs, stop, tasks }
}

/// Starts each function with its environment, logging to `log_dir` and totalling its metrics.
/// The functions poll the emulator itself, never through the front door.
async fn start_functions(
    envs: [(&'static str, HashMap<String, String>); 4],
    emulator_port: u16,
    log_dir: &std::path::Path,
    metrics: &MetricTotals,
) -> Result<HashMap<String, FunctionProcess>, PipelineError> {
    let mut functions = HashMap::new();
    for (name, env) in envs {
        let log = log_dir.join(format!("{name}.log"));
        let instances = if name == "intake" { INTAKE_INSTANCES } else { 1 };
        for instance in 1..=instances {
            let process =
                FunctionProcess::start(name, env.clone(), emulator_port, log.clone(), metrics.clone()).await?;
            let label = if instance == 1 { name.to_owned() } else { format!("{name}-{instance}") };
            functions.insert(label, process);
        }
    }
    Ok(functions)
}

/// Intake instances polling the emulator at once, as Lambda scales an API's function out: a
/// status read waiting on a slow store holds one instance, not every client behind it.
pub const INTAKE_INSTANCES: usize = 3;

/// Makes the simulator check the key the stack's secret holds, as a real provider checks its
/// account's (or another one, when the run plays a key rotated at the provider); the key.
async fn require_key(
    options: &PipelineOptions,
    sdk: &aws_config::SdkConfig,
    stack: &Stack,
    simulator: &Simulator,
) -> Result<String, PipelineError> {
    let mut provider_key = read_secret(sdk, stack.provider_key_secret()).await?;
    if options.provider_refuses_key {
        provider_key.push_str("-rotated-at-the-provider");
    }
    let config = SimConfig { capacity: options.scenario.provider_capacity(), ..options.simulator.clone() };
    configure_simulator(&simulator.base_url(), &provider_key, &config).await?;
    Ok(provider_key)
}

/// An event source mapping's stand-in: batches of 10 from `queue_url` to `invoke_url`.
fn poller_config(queue_url: &str, queue_arn: &str, invoke_url: String) -> PollerConfig {
    PollerConfig {
        queue_url: queue_url.into(),
        queue_arn: queue_arn.into(),
        invoke_url,
        batch_size: 10,
        invoke_timeout: Duration::from_secs(10),
    }
}

/// Each function's environment: the stack's resources, the AWS endpoint of this run, and the
/// function's own settings.
fn function_envs(
    options: &PipelineOptions,
    stack: &Stack,
    provider_url: &str,
    aws: &AwsGateway,
) -> [(&'static str, HashMap<String, String>); 4] {
    let mut common: HashMap<String, String> = [
        ("IDEMPOTENCY_TABLE", stack.idempotency_table()),
        ("FAILURES_TABLE", stack.failures_table()),
        ("METRICS_NAMESPACE", "PaymentsPipeline"),
        ("RUST_LOG", "info"),
        // As the template sets it.
        ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for var in [
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_SDK_ATTEMPT_TIMEOUT_MS",
        "AWS_SDK_OPERATION_TIMEOUT_MS",
    ] {
        if let Ok(value) = std::env::var(var) {
            common.insert(var.to_owned(), value);
        }
    }
    let with = |function: &str, extra: Vec<(&str, String)>| {
        let mut env = common.clone();
        env.insert("AWS_ENDPOINT_URL".to_owned(), aws.endpoint(function));
        env.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
        env
    };
    let provider = [
        ("PROVIDER_BASE_URL", provider_url.to_owned()),
        ("PROVIDER_ALLOW_HTTP", "true".into()),
        ("PROVIDER_API_KEY_SECRET", stack.provider_key_secret().to_owned()),
        ("PROVIDER_TIMEOUT_MS", "1500".into()),
        ("PROVIDER_CONNECT_TIMEOUT_MS", "500".into()),
    ];
    let queue = ("PAYMENTS_QUEUE_URL", stack.queue_url().to_owned());
    [
        (
            "intake",
            with(
                "intake",
                vec![
                    queue.clone(),
                    ("ALLOW_SCOPE_HEADER", "true".into()),
                    ("RECOVERY_GRACE_SECONDS", LOCAL_RECOVERY_GRACE_S.to_string()),
                ],
            ),
        ),
        ("completer", with("completer", vec![queue, ("RECOVERY_QUIET_SECONDS", "60".into())])),
        ("processor", with("processor", [&provider[..], &processor_tuning(options, stack)].concat())),
        (
            "dlq-consumer",
            with("dlq-consumer", [&provider[..], &[("SOURCE_QUEUE_URL", stack.queue_url().to_owned())]].concat()),
        ),
    ]
}

/// The processor's tuning in local runs: retries within seconds, and a circuit breaker that
/// probes after 5 s (then up to every 20 s), so that an outage of minutes plays out in minutes.
fn processor_tuning(options: &PipelineOptions, stack: &Stack) -> Vec<(&'static str, String)> {
    vec![
        ("LEASE_MARGIN_MS", "500".into()),
        ("IDEMPOTENCY_MAX_LEASE_SECONDS", "15".into()),
        ("BACKOFF_BASE_MS", "500".into()),
        ("BACKOFF_CAP_SECONDS", "4".into()),
        ("BATCH_CONCURRENCY", PROCESSOR_CONCURRENCY.to_string()),
        ("DEAD_LETTER_QUEUE_URL", stack.dlq_url().to_owned()),
        ("MAX_PROVIDER_ATTEMPTS", options.max_provider_attempts.to_string()),
        ("MAX_PAYMENT_AGE_SECONDS", "1800".into()),
        ("BREAKER_FAILURE_WINDOW_SECONDS", "10".into()),
        ("BREAKER_OPEN_SECONDS", "5".into()),
        ("BREAKER_OPEN_MAX_SECONDS", "20".into()),
        ("BREAKER_CACHE_SECONDS", "2".into()),
        ("BREAKER_HALF_OPEN_WAIT_MS", "1000".into()),
        // Unset (empty) unless the run paces the processor.
        ("PROVIDER_RATE_LIMIT", options.scenario.processor_pace().map_or(String::new(), |r| r.to_string())),
    ]
}

/// The string value of the secret `secret_id`.
async fn read_secret(sdk: &aws_config::SdkConfig, secret_id: &str) -> Result<String, PipelineError> {
    use payments_core::payment::credentials::{KeySource, SecretsManagerKey};
    let source = SecretsManagerKey::new(aws_sdk_secretsmanager::Client::new(sdk), secret_id);
    source.fetch().await.map_err(|e| PipelineError::Other(e.to_string()))
}

/// Runs the main job: start, submit, settle, reconcile, stop. Returns the reconciliation; the
/// caller decides what a violation means (the CLI exits non-zero).
pub async fn run(options: &PipelineOptions) -> Result<Reconciliation, PipelineError> {
    let running = start(options).await?;
    let result = drive(&running, options).await;
    running.shutdown().await;
    result
}

/// Submits the workload, waits for the system to settle, and reconciles (with the AWS calls the
/// functions made so far judged against their roles).
pub async fn drive(running: &Running, options: &PipelineOptions) -> Result<Reconciliation, PipelineError> {
    let plan = plan(&options.workload, options.max_provider_attempts);
    let started = Instant::now();
    say(options, &format!("submitting {} payments through {}", plan.payments.len(), running.intake_url()));
    send_poison(running, &plan).await?;
    let sampling = Arc::new(AtomicBool::new(false));
    let sqs = aws_sdk_sqs::Client::new(&running.sdk);
    let depth = sample_depth(sqs, running.stack.queue_url().to_owned(), sampling.clone(), options.progress);
    let incident_over = AtomicBool::new(false);
    let (incident, settled) = tokio::join!(play_incident(running, options, &incident_over), async {
        let submission = submit_and_kill(running, options, &plan).await;
        abandon_acceptances(running, &plan).await?;
        say(options, &format!("intake answered {:?}; waiting for the system to settle", submission.statuses));
        let (books, drained_at) = wait_until_drained(running, options, started, &incident_over).await?;
        let heard = Heard { statuses_read: read_back(running, &plan).await, submission };
        Ok::<_, PipelineError>((heard, books, drained_at, Instant::now()))
    });
    sampling.store(true, Relaxed);
    let queue_depth = depth.await.unwrap_or_default();
    let (heard, books, drained_at, settled_at) = settled?;
    let incident = incident?.map(|timeline| IncidentFigures {
        recovery_to_settled: settled_at.saturating_duration_since(timeline.recovered),
        ..timeline.figures
    });
    // Let the last EMF lines reach the logs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut r = reconcile(running, options, &plan, &heard, &books, settled_at - started).await?;
    r.queue_depth = queue_depth;
    r.drain_time = drained_at - started;
    judge_incident(&mut r, options, incident);
    let violations = r.provider_load.judge(r.accepted, r.drain_time);
    r.violations.extend(violations);
    account_for_aws(&mut r, running).await?;
    Ok(r)
}

/// The functions' AWS calls judged against their roles, and the AWS faults injected.
async fn account_for_aws(r: &mut Reconciliation, running: &Running) -> Result<(), PipelineError> {
    r.permissions = running.permissions().await?;
    r.violations.extend(r.permissions.denied_lines());
    r.aws_faults =
        running.aws.faults().into_iter().map(|((op, kind), n)| (format!("{op} {}", kind.as_str()), n)).collect();
    let _ = std::fs::write(running.log_dir.join("aws-calls.tsv"), running.aws.calls().table());
    Ok(())
}

/// What the clients heard: the intake's answers to their submissions, and the statuses they
/// read back once the system settled.
struct Heard {
    submission: Submission,
    statuses_read: BTreeMap<(String, String), PaymentStatus>,
}

/// The plan's abandoned payments, written as an intake that died right after its claim leaves
/// them: a recoverable claim holding the message, never enqueued, never completed, no answer to
/// the client. The intake recorded them (their status reads RECEIVED): the completer must finish
/// them.
async fn abandon_acceptances(running: &Running, plan: &Plan) -> Result<(), PipelineError> {
    let store = DynamoDbStore::new(aws_sdk_dynamodb::Client::new(&running.sdk), running.stack.idempotency_table());
    let idempotency = Idempotency::new(store, IdempotencyConfig::default());
    let invalid = |e: &dyn std::fmt::Display| PipelineError::Other(format!("abandoned payment: {e}"));
    for &i in &plan.abandoned {
        let planned = &plan.payments[i];
        let now = idempotency.now_ms();
        let message = PaymentMessage {
            schema_version: SCHEMA_VERSION,
            idempotency_key: IdempotencyKey::new(&planned.key).map_err(|e| invalid(&e))?,
            scope: Scope::new(&planned.scope).map_err(|e| invalid(&e))?,
            payment: parse_strict(&planned.body.to_string()).map_err(|e| invalid(&e))?,
            created_at: rfc3339_ms(now),
            correlation_id: format!("abandoned-{i}"),
        };
        let hash = PayloadHash::of(&message.payment).map_err(|e| invalid(&e))?;
        let lease_end = now + INTAKE_LEASE_MS;
        let recovery = Recovery { due_ms: lease_end + LOCAL_RECOVERY_GRACE_S * 1000, input: Some(message.to_body()) };
        let key = intake_key(&message.scope, &message.idempotency_key);
        idempotency.claim_recoverable(&key, &hash, lease_end, Some(recovery)).await.map_err(|e| invalid(&e))?;
    }
    Ok(())
}

/// Poison bodies go straight to the queue, as a forged or corrupted message would.
async fn send_poison(running: &Running, plan: &Plan) -> Result<(), PipelineError> {
    let sqs = aws_sdk_sqs::Client::new(&running.sdk);
    for body in &plan.poison {
        sqs.send_message()
            .queue_url(running.stack.queue_url())
            .message_body(body)
            .send()
            .await
            .map_err(|e| PipelineError::Other(format!("sending poison: {e:?}")))?;
    }
    Ok(())
}

/// Submits the plan through the intake; with `kill_processor`, SIGKILLs the processor in the
/// middle of a batch meanwhile and starts it again.
async fn submit_and_kill(running: &Running, options: &PipelineOptions, plan: &Plan) -> Submission {
    let intake_url = running.intake_url();
    let submission = submit(plan, &intake_url, options.clients);
    if !options.kill_processor {
        return submission.await;
    }
    let (submission, ()) = tokio::join!(submission, async {
        mid_batch(&running.pollers.payments).await;
        let processor = &running.functions["processor"];
        processor.kill().await;
        say(options, "processor SIGKILLed mid-batch; restarting it");
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Err(e) = processor.restart().await {
            say(options, &format!("restart failed: {e}"));
        }
    });
    submission
}

/// Returns when a batch is still running 300 ms after it started (one waiting on the provider:
/// commit-then-timeout holds a call for 1.5 s): the moment to kill mid-batch.
async fn mid_batch(poller: &PollerStats) {
    let batches = |p: &PollerStats| p.batches.load(Relaxed);
    loop {
        while !poller.in_flight.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let batch = batches(poller);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if poller.in_flight.load(Relaxed) && batches(poller) == batch {
            return;
        }
    }
}

/// When the incident ended, and what it came to so far.
struct IncidentTimeline {
    figures: IncidentFigures,
    recovered: Instant,
}

/// The scenario's incident: two seconds into the submission, the simulator is switched to the
/// incident's configuration for its window, then back. Sets `over` when done (at once when the
/// scenario has no incident).
async fn play_incident(
    running: &Running,
    options: &PipelineOptions,
    over: &AtomicBool,
) -> Result<Option<IncidentTimeline>, PipelineError> {
    let Some(window) = options.scenario.window() else {
        over.store(true, Relaxed);
        return Ok(None);
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = running.ledger().await?.requests;
    running.configure_simulator(&options.scenario.incident_config(&options.simulator)).await?;
    say(options, &format!("provider {} begins, for {} s", options.scenario.name(), window.as_secs()));
    tokio::time::sleep(window).await;
    running.configure_simulator(&options.simulator).await?;
    let after = running.ledger().await?.requests;
    say(options, &format!("provider recovered; {} charge requests reached it meanwhile", after - before));
    over.store(true, Relaxed);
    let figures = IncidentFigures { window, requests_during: after - before, ..IncidentFigures::default() };
    Ok(Some(IncidentTimeline { figures, recovered: Instant::now() }))
}

/// The outage scenario's promises: nothing dead-lettered, no retry storm (provider requests
/// during the outage ≤ probes + 2 × the processor's concurrency), everything settled within 60 s
/// of the provider's recovery.
fn judge_incident(r: &mut Reconciliation, options: &PipelineOptions, incident: Option<IncidentFigures>) {
    let Some(mut figures) = incident else { return };
    figures.probes = r.metrics.get("processor.ProviderProbe").copied().unwrap_or(0.0) as u64;
    if matches!(options.scenario, Scenario::Outage { .. }) {
        let dead = r.count(PaymentStatus::DeadLettered);
        if dead > 0 {
            r.violations.push(format!("{dead} payments dead-lettered by an outage shorter than their maximum age"));
        }
        let allowed = figures.probes + 2 * PROCESSOR_CONCURRENCY;
        if figures.requests_during > allowed {
            r.violations.push(format!(
                "{} provider requests during the outage, more than {} probes + 2 × concurrency {}",
                figures.requests_during, figures.probes, PROCESSOR_CONCURRENCY
            ));
        }
        if figures.recovery_to_settled > Duration::from_secs(60) {
            r.violations.push(format!(
                "settled {:.1} s after the provider recovered (more than 60 s)",
                figures.recovery_to_settled.as_secs_f64()
            ));
        }
    }
    r.incident = Some(figures);
}

fn say(options: &PipelineOptions, line: &str) {
    if options.progress {
        eprintln!("[pipeline] {line}");
    }
}

/// Polls until both queues are empty, every payment the intake recorded is in a terminal state
/// with its acceptance finished, and the incident (if any) is `over`. The books are read only
/// while the queues are empty: in a large run a read of every payment each second would be most
/// of LocalStack's load. Returns the books and when the queues were found empty for good.
async fn wait_until_drained(
    running: &Running,
    options: &PipelineOptions,
    started: Instant,
    over: &AtomicBool,
) -> Result<(Books, Instant), PipelineError> {
    let sqs = aws_sdk_sqs::Client::new(&running.sdk);
    let mut books = Books::default();
    let mut drained_at = None;
    loop {
        // A depth that cannot be read counts as not settled yet.
        let read_at = Instant::now();
        let depth = match (
            queue_depth(&sqs, running.stack.queue_url()).await,
            queue_depth(&sqs, running.stack.dlq_url()).await,
        ) {
            (Ok(queued), Ok(dead)) => queued + dead,
            _ => u64::MAX,
        };
        drained_at = if depth == 0 { drained_at.or(Some(read_at)) } else { None };
        if depth == 0 {
            books = Books::read(&running.sdk, &running.stack).await.map_err(PipelineError::Other)?;
        }
        let provider = running.ledger_summary().await.unwrap_or_default();
        say(
            options,
            &format!(
                "t+{:>5.1}s  queued {depth}  batches {}  retried {}  charges {}  terminal {}/{}",
                started.elapsed().as_secs_f64(),
                running.pollers.payments.batches.load(Relaxed),
                running.pollers.payments.failed.load(Relaxed),
                provider.charge_count,
                books.terminal(),
                books.payments.len(),
            ),
        );
        if depth == 0 && books.settled() && !books.payments.is_empty() && over.load(Relaxed) {
            return Ok((books, drained_at.unwrap_or(read_at)));
        }
        if started.elapsed() > options.settle_timeout {
            return Err(PipelineError::NotSettled(
                options.settle_timeout,
                format!("{}/{} terminal, {depth} queued", books.terminal(), books.payments.len()),
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How often a client asks again for a status it was not given (503, 409, no answer).
const READ_BACK_TRIES: u32 = 30;

/// Every client reads its payment's status through the API, as careful clients do, asking
/// again after a `503` (its `Retry-After`) until it is answered (16 reads at a time).
async fn read_back(running: &Running, plan: &Plan) -> BTreeMap<(String, String), PaymentStatus> {
    use futures::StreamExt;
    let client = reqwest::Client::new();
    // The abandoned acceptances' clients too: their request was never answered.
    let reads = plan.payments.iter().map(|p| {
        let (client, url, scope, key) =
            (client.clone(), format!("{}/{}", running.intake_url(), p.key), p.scope.clone(), p.key.clone());
        async move {
            for _ in 0..READ_BACK_TRIES {
                let request = crate::caller::identified(client.get(&url).build().ok()?, &scope);
                match client.execute(request).await {
                    Ok(answer) if answer.status() == 200 => {
                        let view = answer.json::<PaymentView>().await.ok()?;
                        return Some(((scope, key), view.status));
                    }
                    Ok(answer) if answer.status() == 404 => return None,
                    Ok(answer) => {
                        let wait = answer.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
                        tokio::time::sleep(Duration::from_secs(wait.unwrap_or(1))).await;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
            None
        }
    });
    let read: Vec<_> = futures::stream::iter(reads).buffer_unordered(16).collect().await;
    read.into_iter().flatten().collect()
}

impl Running {
    /// The AWS calls each function made so far, judged against the role the stack gives it.
    pub async fn permissions(&self) -> Result<Permissions, PipelineError> {
        let roles = crate::iam::role_grants(&self.sdk, &self.stack.name)
            .await
            .map_err(|e| PipelineError::Other(e.to_string()))?;
        let calls = self.aws.calls().snapshot();
        let distinct = calls.keys().cloned().collect();
        Ok(Permissions { findings: crate::iam::check(&roles, &distinct), calls })
    }

    async fn ledger(&self) -> Result<LedgerSnapshot, PipelineError> {
        self.read_ledger("").await
    }

    /// The provider's ledger, every charge included.
    pub async fn simulator_ledger(&self) -> LedgerSnapshot {
        self.ledger().await.unwrap_or_default()
    }

    /// The provider's counts without its charges, cheap to poll.
    async fn ledger_summary(&self) -> Result<LedgerSnapshot, PipelineError> {
        self.read_ledger("?summary").await
    }

    async fn read_ledger(&self, query: &str) -> Result<LedgerSnapshot, PipelineError> {
        let response = reqwest::get(format!("{}/ledger{query}", self.simulator.base_url()))
            .await
            .map_err(|e| PipelineError::Other(e.to_string()))?;
        response.json().await.map_err(|e| PipelineError::Other(e.to_string()))
    }

    /// Reconfigures the simulator at runtime, keeping the API key it checks.
    async fn configure_simulator(&self, config: &SimConfig) -> Result<(), PipelineError> {
        configure_simulator(&self.simulator.base_url(), &self.provider_key, config).await
    }
}

/// Reconfigures the simulator at `base_url` at runtime (`PUT /_sim/config`), checking `api_key`.
async fn configure_simulator(base_url: &str, api_key: &str, config: &SimConfig) -> Result<(), PipelineError> {
    let config = SimConfig { api_key: Some(api_key.to_owned()), ..config.clone() };
    let answer = reqwest::Client::new().put(format!("{base_url}/_sim/config")).json(&config).send().await;
    match answer {
        Ok(response) if response.status().is_success() => Ok(()),
        other => Err(PipelineError::Other(format!("simulator config refused: {other:?}"))),
    }
}

/// Reads the run's outcome from the provider's ledger, the failure records, the payments'
/// statuses and the functions' metrics, and checks every invariant against it.
async fn reconcile(
    running: &Running,
    options: &PipelineOptions,
    plan: &Plan,
    heard: &Heard,
    books: &Books,
    settle_time: Duration,
) -> Result<Reconciliation, PipelineError> {
    let ledger = running.ledger().await?;
    let mut r = figures(running, options, &heard.submission, &ledger, &books.failure_records);
    r.accepted = books.payments.len();
    r.abandoned = plan.abandoned.len();
    r.settle_time = settle_time;
    for payment in books.payments.values() {
        *r.statuses.entry(payment.status).or_default() += 1;
    }
    let told: BTreeSet<(String, String)> = heard
        .submission
        .accepted
        .keys()
        .chain(heard.statuses_read.keys())
        .filter(|id| books.payments.contains_key(*id))
        .cloned()
        .collect();
    r.told = told.len();
    check_money(&mut r, &ledger, books, &told);
    for (id, said) in &heard.statuses_read {
        let kept = books.payments.get(id).map(|p| p.status);
        if kept != Some(*said) {
            r.violations.push(format!("{}/{}: the API said {said:?}, the records hold {kept:?}", id.0, id.1));
        }
    }
    check_metrics(&mut r, options.kill_processor, plan, &running.metrics, books);
    Ok(r)
}

/// The run's figures, before any check.
fn figures(
    running: &Running,
    options: &PipelineOptions,
    submission: &Submission,
    ledger: &LedgerSnapshot,
    records: &[FailureRecord],
) -> Reconciliation {
    let m = &running.metrics;
    let latency = |service: &str, name: &str| (m.percentile(service, name, 50.0), m.percentile(service, name, 99.0));
    let mut outcome_lookups = m.by_dimension("processor", "OutcomeLookup");
    for (answer, n) in m.by_dimension("dlq-consumer", "OutcomeLookup") {
        *outcome_lookups.entry(answer).or_default() += n;
    }
    Reconciliation {
        http: submission.statuses.clone(),
        replays: submission.replays,
        duplicates_suppressed: m.sum("processor", "DuplicateSuppressed") as u64,
        retries: m.sum("processor", "Retried") as u64,
        retry_reasons: m.by_dimension("processor", "Failure"),
        poison: m.sum("processor", "Poison") as u64,
        provider_charges: ledger.charges.len(),
        provider_requests: ledger.requests,
        provider_faults: ledger.faults.clone(),
        open_failure_records: records.iter().filter(|f| f.state == FailureState::Open).count(),
        latency_p50_p99: latency("processor", "ProcessingLatency"),
        killed: options.kill_processor,
        log_dir: running.log_dir.clone(),
        intake_latency_p50_p99: (submission.latency_percentile(50.0), submission.latency_percentile(99.0)),
        provider_load: ProviderLoad {
            limit: Some(options.scenario.provider_capacity().rate_per_s).filter(|l| *l > 0),
            paced_at: options.scenario.processor_pace(),
            seen: ledger.capacity.clone(),
        },
        interrupted_invocations: running.pollers.payments.invoke_errors.load(Relaxed),
        scenario: options.scenario.name(),
        given_up: m.by_dimension("processor", "GivenUp"),
        deferred: m.by_dimension("processor", "Deferred"),
        circuit_transitions: m.by_dimension("processor", "CircuitTransition"),
        recovered: m.by_dimension("completer", "Recovery"),
        outcome_lookups,
        metrics: headline_metrics(m),
        ..Reconciliation::default()
    }
}

/// The metrics the checks compare with the ledger, by `service.Name`.
fn headline_metrics(m: &MetricTotals) -> BTreeMap<String, f64> {
    let processor = [
        "Processed",
        "FailedPermanently",
        "DuplicateSuppressed",
        "Retried",
        "Poison",
        "ProviderProbe",
        "GivenUp",
        "ProviderUnauthorized",
    ];
    let named = processor.iter().map(|name| ("processor", *name));
    named
        .chain([("dlq-consumer", "DeadLettered"), ("intake", "Accepted")])
        .map(|(service, name)| (format!("{service}.{name}"), m.sum(service, name)))
        .collect()
}
