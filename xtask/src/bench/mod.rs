//! `bench`: this project's processor against Powertools for AWS Lambda (Python), side by side, on
//! two backends (LocalStack, and DynamoDB Local with a modelled in-region latency) and the same
//! provider simulator (no injected faults); then the AWS bill per million payments and a chart.

mod backend;
mod chart;
pub(crate) mod cost;
pub(crate) mod report;

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use localenv::{cache_dir, repo_root};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use backend::Backend;

/// Benchmark size and backends.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Batches of 10 messages per variant.
    #[arg(long, default_value_t = 30)]
    batches: usize,
    /// Repetitions of the cold-init measurement.
    #[arg(long, default_value_t = 9)]
    cold_starts: usize,
    /// The round trip the DynamoDB Local backend adds to every request, DynamoDB's and the
    /// provider's alike (an in-region call is a few milliseconds).
    #[arg(long, default_value_t = 4)]
    latency_ms: u64,
    /// Memory size the bill assumes for both implementations (the template's processor has 256).
    #[arg(long, default_value_t = 256)]
    memory_mb: u32,
}

const POWERTOOLS: &str = "aws-lambda-powertools==3.37.0 boto3==1.44.8";

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

async fn run(command: &mut Command, what: &str) -> Result<String, String> {
    let output = command.stderr(Stdio::inherit()).output().await.map_err(|e| format!("{what}: {e}"))?;
    if !output.status.success() {
        return Err(format!("{what} failed: {}", output.status));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The last JSON object a variant printed (EMF lines come before it).
fn last_json(stdout: &str) -> Result<Value, String> {
    result_line(stdout).map(|(result, _)| result)
}

/// The result a variant printed last, and that line as printed.
fn result_line(stdout: &str) -> Result<(Value, &str), String> {
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok().filter(|v| v.get("_aws").is_none()).map(|v| (v, l)))
        .ok_or_else(|| format!("no result in output: {}", stdout.chars().take(400).collect::<String>()))
}

fn batches(scope: &str, run: &str, count: usize) -> Value {
    // Accepted now: a payment older than the processor's maximum age would only be looked up.
    let accepted = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let batches: Vec<Vec<Value>> = (0..count)
        .map(|b| {
            (0..10)
                .map(|i| {
                    let body = json!({
                        "schema_version": 1, "idempotency_key": format!("{run}-{b}-{i}"), "scope": scope,
                        "payment": {"amount": 1000 + i, "currency": "EUR", "payment_method": "pm_card_visa",
                                    "merchant_reference": format!("order-{b}-{i}"), "metadata": {}},
                        "created_at": accepted, "correlation_id": format!("bench-{b}-{i}")
                    });
                    json!({
                        "messageId": format!("{run}-{b}-{i}"), "receiptHandle": "bench", "body": body.to_string(),
                        "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
                        "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:bench", "awsRegion": "us-east-1"
                    })
                })
                .collect()
        })
        .collect();
    json!(batches)
}

/// The operations that write items, and those that read them.
const WRITES: &[&str] = &["UpdateItem", "PutItem", "DeleteItem", "BatchExecuteStatement"];
const READS: &[&str] = &["GetItem", "Query", "BatchGetItem"];

/// One variant's measurements, as its process printed them.
struct Variant {
    name: &'static str,
    result: Value,
    /// What the process wrote to stdout besides its result (EMF metrics, logs): what CloudWatch
    /// Logs would ingest.
    log_bytes: usize,
}

impl Variant {
    fn from_output(name: &'static str, stdout: &str) -> Result<Self, String> {
        // The result line as printed: Python's `json.dumps` spaces it, serde_json does not.
        let (result, line) = result_line(stdout)?;
        let log_bytes = stdout.len().saturating_sub(line.len() + 1);
        Ok(Self { name, result, log_bytes })
    }

    /// CPU time per message in the steady state (every batch but the first).
    fn cpu_ms_per_message(&self) -> f64 {
        let messages = self.result["cpu_messages"].as_f64().unwrap_or(f64::NAN);
        self.result["cpu_s"].as_f64().unwrap_or(f64::NAN) * 1000.0 / messages
    }

    /// Items written or read by `operations`: a statement of a PartiQL batch or a key of a
    /// `BatchGetItem` is an item, as DynamoDB bills it. (Powertools sends one item per request,
    /// so its requests are its items.)
    fn items(&self, operations: &[&str]) -> f64 {
        let items = self.result.get("dynamodb_items").unwrap_or(&self.result["dynamodb_requests"]);
        operations.iter().filter_map(|op| items.get(*op).and_then(Value::as_f64)).sum()
    }

    /// What the bill needs, per message.
    fn per_message(&self) -> cost::PerMessage {
        let ms = self.batch_ms();
        cost::PerMessage {
            wall_ms: ms.iter().sum::<f64>() / self.messages(),
            cpu_ms: self.cpu_ms_per_message(),
            writes: self.writes_per_message(),
            reads: self.items(READS) / self.messages(),
            log_bytes: self.log_bytes as f64 / self.messages(),
        }
    }

    fn batch_ms(&self) -> Vec<f64> {
        self.result["batch_ms"].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
    }

    fn messages(&self) -> f64 {
        self.result["messages"].as_f64().unwrap_or(1.0)
    }

    fn writes_per_message(&self) -> f64 {
        // Rust's interceptor names operations UpdateItem…, boto3's event names them the same.
        self.items(WRITES) / self.messages()
    }

    fn requests_per_message(&self) -> f64 {
        let total: f64 = self.result["dynamodb_requests"]
            .as_object()
            .map(|o| o.values().filter_map(Value::as_f64).sum())
            .unwrap_or(0.0);
        total / self.messages()
    }

    fn summary(&self) -> Value {
        let ms = self.batch_ms();
        let total_s: f64 = ms.iter().sum::<f64>() / 1000.0;
        json!({
            "variant": self.name,
            "batch_p50_ms": percentile(&ms, 50.0),
            "batch_p99_ms": percentile(&ms, 99.0),
            "messages_per_s": self.messages() / total_s,
            "dynamodb_requests_per_message": self.requests_per_message(),
            "dynamodb_writes_per_message": self.writes_per_message(),
            "dynamodb_requests": self.result["dynamodb_requests"],
            "cpu_ms_per_message": self.cpu_ms_per_message(),
            "first_batch_cpu_ms": self.result["first_batch_cpu_s"].as_f64().unwrap_or(f64::NAN) * 1000.0,
            "peak_rss_mib": self.result["peak_rss_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0,
            "failures": self.result["failures"],
        })
    }
}

async fn python_venv() -> Result<PathBuf, String> {
    let venv = cache_dir().join("bench/venv");
    let marker = venv.join(".installed");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(POWERTOOLS) {
        eprintln!("[bench] installing {POWERTOOLS} into {}", venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv").await?;
        let mut pip = Command::new(venv.join("bin/pip"));
        pip.args(["install", "--quiet", "--disable-pip-version-check"]).args(POWERTOOLS.split(' '));
        run(&mut pip, "pip install").await?;
        std::fs::write(&marker, POWERTOOLS).map_err(|e| e.to_string())?;
    }
    Ok(venv.join("bin/python"))
}

fn release(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    target.join("release").join(name)
}

/// Process start → the runtime client's first request for work, against a listener standing in
/// for the Lambda runtime API.
async fn rust_cold_init(env: &[(String, String)]) -> Result<f64, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let started = Instant::now();
    let mut child = Command::new(release("processor"))
        .envs(env.iter().cloned())
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
        .env("AWS_LAMBDA_FUNCTION_NAME", "processor")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let (mut socket, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .map_err(|_| "no request")?
        .map_err(|e| e.to_string())?;
    let mut first = [0u8; 16];
    socket.read(&mut first).await.map_err(|e| e.to_string())?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    let _ = child.kill().await;
    Ok(elapsed)
}

/// Process start → the handler module imported and its clients built.
async fn python_cold_init(python: &Path, script: &Path, env: &[(String, String)]) -> Result<f64, String> {
    let started = Instant::now();
    let mut child = Command::new(python)
        .arg(script)
        .arg("--init-only")
        .envs(env.iter().cloned())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "ready" {
            return Ok(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Err("python handler never became ready".into())
}

/// Says what the benchmark is doing, with the time since it started.
fn progress(started: Instant, what: &str) {
    eprintln!("[bench {:>5.0} s] {what}", started.elapsed().as_secs_f64());
}

/// What one backend's run measured.
struct BackendRun {
    name: String,
    variants: Vec<Variant>,
    floor_ms: Vec<f64>,
}

impl BackendRun {
    fn summary(&self, variant: &str) -> Value {
        self.variants.iter().find(|v| v.name == variant).map(Variant::summary).unwrap_or(Value::Null)
    }
}

/// Runs the benchmark, prints the tables and the bill, writes the results and the chart.
pub async fn bench(args: BenchArgs) -> Result<ExitCode, String> {
    let started = Instant::now();
    progress(started, "building release binaries");
    build_release().await?;
    let python = python_venv().await?;
    let (_simulator, provider_url) = start_simulator().await?;
    let dir = cache_dir().join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut runs = Vec::new();
    progress(started, "backend: LocalStack (deploying the stack)");
    let localstack = Backend::localstack(&provider_url).await?;
    runs.push(run_backend(&localstack, &args, &python, &dir, started).await?);
    drop(localstack);
    let latency = Duration::from_millis(args.latency_ms);
    progress(started, &format!("backend: DynamoDB Local + {} ms per request", args.latency_ms));
    let dynamodb_local = Backend::dynamodb_local(&provider_url, latency).await?;
    runs.push(run_backend(&dynamodb_local, &args, &python, &dir, started).await?);
    progress(started, "cold init");
    let (rust_init, python_init) = cold_inits(&args, &python, &dynamodb_local.env).await?;
    drop(dynamodb_local);
    let report = report::Report { args: &args, runs: &runs, rust_init: &rust_init, python_init: &python_init };
    let all_met = report.write(&dir)?;
    progress(started, "done");
    Ok(if all_met { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

async fn build_release() -> Result<(), String> {
    let mut cargo = Command::new("cargo");
    cargo.current_dir(repo_root()).args(["build", "--release", "--quiet", "--bins"]);
    for package in ["processor", "provider-simulator", "xtask"] {
        cargo.args(["-p", package]);
    }
    run(&mut cargo, "cargo build --release").await.map(drop)
}

/// The provider simulator (no faults), and its URL.
async fn start_simulator() -> Result<(Child, String), String> {
    let mut simulator = Command::new(release("provider-simulator"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("provider-simulator: {e}"))?;
    let mut out = BufReader::new(simulator.stdout.take().expect("piped")).lines();
    let url = out
        .next_line()
        .await
        .ok()
        .flatten()
        .and_then(|l| l.strip_prefix("listening on ").map(str::to_owned))
        .ok_or("the simulator did not start")?;
    Ok((simulator, url))
}

/// The variants, in order: the duplicates re-run the batched variant's messages.
const VARIANTS: [&str; 6] = [
    "rust: first-time, batched writes (concurrency 10)",
    "rust: duplicates, batched writes (concurrency 10)",
    "rust: first-time, a request per write (concurrency 10)",
    "rust: first-time (one at a time)",
    "powertools: first-time",
    "powertools: duplicates",
];

/// Every variant and the floor on one backend, each variant in a process of its own.
async fn run_backend(
    backend: &Backend,
    args: &BenchArgs,
    python: &Path,
    dir: &Path,
    started: Instant,
) -> Result<BackendRun, String> {
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()
    );
    let write = |name: &str, scope: &str| -> Result<PathBuf, String> {
        let path = dir.join(format!("{name}.json"));
        let messages = batches(scope, &format!("{name}-{run_id}"), args.batches);
        std::fs::write(&path, messages.to_string()).map_err(|e| e.to_string())?;
        Ok(path)
    };
    let (batched, concurrent, sequential, powertools) = (
        write("rust-batched", "bench-rust-batched")?,
        write("rust", "bench-rust")?,
        write("rust-seq", "bench-rust-seq")?,
        write("powertools", "bench-powertools")?,
    );
    let script = repo_root().join("infra/bench/powertools_processor.py");
    // DynamoDB Local is a JVM: its first few hundred requests run while the JIT compiles, and
    // its PartiQL path (the batched writes) is compiled apart from UpdateItem's.
    progress(started, &format!("{}: warm-up (200 payments and 5 batched batches, not measured)", backend.name));
    floor(backend, 200).await?;
    let warm_up = dir.join("rust-warm-up.json");
    std::fs::write(&warm_up, batches("bench-warm-up", &format!("warm-up-{run_id}"), 5).to_string())
        .map_err(|e| e.to_string())?;
    run(&mut rust_command(&backend.env, &warm_up, "10", true), "warm-up").await?;
    let mut variants = Vec::new();
    for (i, name) in VARIANTS.into_iter().enumerate() {
        progress(started, &format!("{}: {name} ({}/{})", backend.name, i + 1, VARIANTS.len()));
        let mut command = match i {
            0 | 1 => rust_command(&backend.env, &batched, "10", true),
            2 => rust_command(&backend.env, &concurrent, "10", false),
            3 => rust_command(&backend.env, &sequential, "1", false),
            _ => {
                let mut c = Command::new(python);
                c.envs(backend.env.iter().cloned()).arg(&script).arg("--messages").arg(&powertools);
                c
            }
        };
        let stdout = run(&mut command, name).await?;
        variants.push(Variant::from_output(name, &stdout)?);
    }
    progress(started, &format!("{}: floor", backend.name));
    let floor_ms = floor(backend, 50).await?;
    Ok(BackendRun { name: backend.name.clone(), variants, floor_ms })
}

/// `n` payments one after another, each a claim, a provider call and a completion (ms each).
async fn floor(backend: &Backend, n: usize) -> Result<Vec<f64>, String> {
    let mut floor = Command::new(release("bench_processor"));
    floor.envs(backend.env.iter().cloned()).arg("--floor").arg(n.to_string());
    let floor = last_json(&run(&mut floor, "floor").await?)?;
    Ok(floor["floor_ms"].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default())
}

fn rust_command(env: &[(String, String)], messages: &Path, concurrency: &str, batched: bool) -> Command {
    let mut c = Command::new(release("bench_processor"));
    c.envs(env.iter().cloned())
        .env("BATCH_CONCURRENCY", concurrency)
        .env("IDEMPOTENCY_BATCH_WRITES", batched.to_string())
        .arg("--messages")
        .arg(messages);
    c
}

/// Cold init of both implementations, alternately, `args.cold_starts` times.
async fn cold_inits(args: &BenchArgs, python: &Path, env: &[(String, String)]) -> Result<(Vec<f64>, Vec<f64>), String> {
    let script = repo_root().join("infra/bench/powertools_processor.py");
    let (mut rust, mut python_init) = (Vec::new(), Vec::new());
    for _ in 0..args.cold_starts {
        rust.push(rust_cold_init(env).await?);
        python_init.push(python_cold_init(python, &script, env).await?);
    }
    Ok((rust, python_init))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    format!("{} × {cpu}", std::thread::available_parallelism().map_or(0, |n| n.get()))
}
