//! `bench`: this project's processor against Powertools for AWS Lambda (Python), side by side, on
//! the same LocalStack and the same provider simulator (no injected faults).

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use localenv::localstack::OwnedLocalStack;
use localenv::{cache_dir, repo_root};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

/// Benchmark size.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Batches of 10 messages per variant.
    #[arg(long, default_value_t = 30)]
    batches: usize,
    /// Repetitions of the cold-init measurement.
    #[arg(long, default_value_t = 9)]
    cold_starts: usize,
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
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok().filter(|v| v.get("_aws").is_none()))
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

struct Variant {
    name: &'static str,
    result: Value,
}

impl Variant {
    fn batch_ms(&self) -> Vec<f64> {
        self.result["batch_ms"].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
    }

    fn messages(&self) -> f64 {
        self.result["messages"].as_f64().unwrap_or(1.0)
    }

    fn writes_per_message(&self) -> f64 {
        let requests = &self.result["dynamodb_requests"];
        // Rust's interceptor names operations UpdateItem…, boto3's event names them the same.
        let writes: f64 = ["UpdateItem", "PutItem", "DeleteItem"]
            .iter()
            .filter_map(|op| requests.get(*op).and_then(Value::as_f64))
            .sum();
        writes / self.messages()
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
            "cpu_ms_per_message": self.result["cpu_s"].as_f64().unwrap_or(f64::NAN) * 1000.0 / self.messages(),
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

/// Runs the benchmark and prints the table.
pub async fn bench(args: BenchArgs) -> Result<ExitCode, String> {
    eprintln!("[bench] building release binaries");
    run(
        Command::new("cargo").current_dir(repo_root()).args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "processor",
            "-p",
            "provider-simulator",
            "-p",
            "xtask",
            "--bins",
        ]),
        "cargo build --release",
    )
    .await?;
    let localstack = OwnedLocalStack::acquire().map_err(|e| e.to_string())?;
    let sdk = payments_core::aws::load_config().await;
    let stack =
        localenv::stack::deploy(&sdk, &localenv::stack::unique_name("bench"), &[]).await.map_err(|e| e.to_string())?;
    let python = python_venv().await?;
    let script = repo_root().join("infra/bench/powertools_processor.py");

    let mut simulator = Command::new(release("provider-simulator"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("provider-simulator: {e}"))?;
    let mut sim_out = BufReader::new(simulator.stdout.take().expect("piped")).lines();
    let sim_url = sim_out
        .next_line()
        .await
        .ok()
        .flatten()
        .and_then(|l| l.strip_prefix("listening on ").map(str::to_owned))
        .ok_or("the simulator did not start")?;

    let dir = cache_dir().join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut env: Vec<(String, String)> = vec![
        ("IDEMPOTENCY_TABLE".into(), stack.idempotency_table().into()),
        ("FAILURES_TABLE".into(), stack.failures_table().into()),
        ("PROVIDER_BASE_URL".into(), sim_url.clone()),
        ("PROVIDER_ALLOW_HTTP".into(), "true".into()),
        ("DEAD_LETTER_QUEUE_URL".into(), stack.dlq_url().into()),
        ("METRICS_NAMESPACE".into(), "PaymentsBench".into()),
    ];
    for var in ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"] {
        if let Ok(v) = std::env::var(var) {
            env.push((var.into(), v));
        }
    }
    // botocore reads the region from AWS_DEFAULT_REGION.
    if let Ok(region) = std::env::var("AWS_REGION") {
        env.push(("AWS_DEFAULT_REGION".into(), region));
    }
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    );
    let write = |name: &str, value: Value| -> Result<PathBuf, String> {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, value.to_string()).map_err(|e| e.to_string())?;
        Ok(path)
    };
    let rust_messages = write("rust-messages", batches("bench-rust", &format!("r{run_id}"), args.batches))?;
    let sequential_messages =
        write("rust-seq-messages", batches("bench-rust-seq", &format!("s{run_id}"), args.batches))?;
    let python_messages =
        write("powertools-messages", batches("bench-powertools", &format!("p{run_id}"), args.batches))?;

    let rust = |file: &Path, concurrency: &str| {
        let mut c = Command::new(release("bench_processor"));
        c.envs(env.iter().cloned()).env("BATCH_CONCURRENCY", concurrency).arg("--messages").arg(file);
        c
    };
    let python_run = |file: &Path| {
        let mut c = Command::new(&python);
        c.envs(env.iter().cloned()).arg(&script).arg("--messages").arg(file);
        c
    };
    let mut variants = Vec::new();
    for (name, mut command) in [
        ("rust: first-time (concurrency 10)", rust(&rust_messages, "10")),
        ("rust: duplicates (concurrency 10)", rust(&rust_messages, "10")),
        ("rust: first-time (one at a time)", rust(&sequential_messages, "1")),
        ("powertools: first-time", python_run(&python_messages)),
        ("powertools: duplicates", python_run(&python_messages)),
    ] {
        eprintln!("[bench] {name}");
        variants.push(Variant { name, result: last_json(&run(&mut command, name).await?)? });
    }
    eprintln!("[bench] floor");
    let floor = last_json(
        &run(Command::new(release("bench_processor")).envs(env.iter().cloned()).args(["--floor", "50"]), "floor")
            .await?,
    )?;
    let floor_ms: Vec<f64> =
        floor["floor_ms"].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
    eprintln!("[bench] cold init");
    let mut rust_init = Vec::new();
    let mut python_init = Vec::new();
    for _ in 0..args.cold_starts {
        rust_init.push(rust_cold_init(&env).await?);
        python_init.push(python_cold_init(&python, &script, &env).await?);
    }
    drop(simulator);
    localstack.stop();

    let summaries: Vec<Value> = variants.iter().map(Variant::summary).collect();
    let by = |name: &str| summaries.iter().find(|s| s["variant"] == name).cloned().unwrap_or(Value::Null);
    let (rust_first, rust_dup, rust_seq, pt_first) = (
        by("rust: first-time (concurrency 10)"),
        by("rust: duplicates (concurrency 10)"),
        by("rust: first-time (one at a time)"),
        by("powertools: first-time"),
    );
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let floor_p50 = percentile(&floor_ms, 50.0);
    let targets = vec![
        ("batch p50 ≤ 1/4 of Powertools'", f(&rust_first, "batch_p50_ms"), f(&pt_first, "batch_p50_ms") / 4.0),
        ("batch p50 ≤ 1.5 × floor", f(&rust_first, "batch_p50_ms"), 1.5 * floor_p50),
        (
            "CPU per message ≤ 1/10 of Powertools'",
            f(&rust_first, "cpu_ms_per_message"),
            f(&pt_first, "cpu_ms_per_message") / 10.0,
        ),
        ("DynamoDB writes per first-time message ≤ 2", f(&rust_first, "dynamodb_writes_per_message"), 2.0),
        ("DynamoDB writes per duplicate ≤ 1", f(&rust_dup, "dynamodb_writes_per_message"), 1.0),
        ("processor peak RSS ≤ 40 MiB", f(&rust_first, "peak_rss_mib"), 40.0),
        ("cold init ≤ 50 ms", percentile(&rust_init, 50.0), 50.0),
    ];
    let mut md = String::from(
        "| variant | batch p50 (ms) | batch p99 (ms) | msg/s | DynamoDB req/msg (writes) | CPU ms/msg | peak RSS (MiB) |\n|---|---|---|---|---|---|---|\n",
    );
    for s in &summaries {
        md.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.2} ({:.2}) | {:.3} | {:.1} |\n",
            s["variant"].as_str().unwrap_or(""),
            f(s, "batch_p50_ms"),
            f(s, "batch_p99_ms"),
            f(s, "messages_per_s"),
            f(s, "dynamodb_requests_per_message"),
            f(s, "dynamodb_writes_per_message"),
            f(s, "cpu_ms_per_message"),
            f(s, "peak_rss_mib"),
        ));
    }
    md.push_str(&format!(
        "\nFloor (one claim + one provider call + one completion, in sequence): p50 {:.2} ms, p99 {:.2} ms.\n",
        floor_p50,
        percentile(&floor_ms, 99.0)
    ));
    md.push_str(&format!(
        "Cold init (process start → ready for the first event), median of {}: Rust {:.1} ms, Python/Powertools {:.1} ms.\n",
        args.cold_starts,
        percentile(&rust_init, 50.0),
        percentile(&python_init, 50.0)
    ));
    md.push_str(&format!(
        "10-record batch, concurrent vs one at a time: {:.1} ms vs {:.1} ms (p50).\n\n| target | measured | limit | met |\n|---|---|---|---|\n",
        f(&rust_first, "batch_p50_ms"),
        f(&rust_seq, "batch_p50_ms")
    ));
    let mut all_met = true;
    for (name, measured, limit) in &targets {
        let met = measured <= limit;
        all_met &= met;
        md.push_str(&format!("| {name} | {measured:.3} | {limit:.3} | {} |\n", if met { "yes" } else { "NO" }));
    }
    let report = json!({
        "variants": summaries,
        "floor_ms": {"p50": floor_p50, "p99": percentile(&floor_ms, 99.0)},
        "cold_init_ms": {"rust_p50": percentile(&rust_init, 50.0), "python_p50": percentile(&python_init, 50.0), "rust": rust_init, "python": python_init},
        "targets": targets.iter().map(|(n, m, l)| json!({"target": n, "measured": m, "limit": l, "met": m <= l})).collect::<Vec<_>>(),
        "machine": machine(),
        "caveat": "LocalStack on the same host is not AWS: network latency is loopback, DynamoDB is DynamoDB Local.",
    });
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("results.md"), &md).map_err(|e| e.to_string())?;
    println!(
        "{md}\nMachine: {}\nLocalStack is not AWS: loopback network, DynamoDB Local. Results: {}",
        machine(),
        dir.join("results.{md,json}").display()
    );
    Ok(if all_met { ExitCode::SUCCESS } else { ExitCode::from(1) })
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
