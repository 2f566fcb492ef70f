//! The functions running locally: `cargo lambda watch --only-lambda-apis` emulates the Lambda
//! runtime and invoke APIs, and each function's binary runs as its own process against it, so
//! that a test can SIGKILL one mid-batch and start it again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::emf_log::MetricTotals;
use crate::{cache_dir, repo_root};

/// The functions of the template.
pub const FUNCTIONS: [&str; 4] = ["intake", "processor", "dlq-consumer", "completer"];

/// Why the local functions could not run.
#[derive(Debug, thiserror::Error)]
pub enum FunctionsError {
    /// A process could not be started.
    #[error("starting {what}: {source}")]
    Spawn {
        /// What.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The build failed.
    #[error("cargo build of the functions failed (exit {0})")]
    Build(String),
    /// The emulator did not come up.
    #[error("cargo lambda watch did not answer on {0} (is cargo-lambda installed? run infra/tools.sh)")]
    EmulatorDown(String),
}

/// Builds the function binaries (dev profile). The whole workspace's binaries are built so that
/// feature unification matches `cargo test --workspace` and nothing is compiled twice.
pub async fn build() -> Result<(), FunctionsError> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(repo_root()).args(["build", "--quiet", "--workspace", "--bins"]);
    let status =
        command.status().await.map_err(|source| FunctionsError::Spawn { what: "cargo build".into(), source })?;
    if status.success() { Ok(()) } else { Err(FunctionsError::Build(status.to_string())) }
}

/// Where cargo put the binaries.
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    target.join("debug").join(name)
}

/// The cargo-lambda installed by `infra/tools.sh` (its venv's `bin` goes first on PATH).
fn cargo_lambda_path() -> String {
    let venv_bin = cache_dir().join("tools/lambda/bin");
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{}:{path}", venv_bin.display())
}

/// `cargo lambda watch --only-lambda-apis` on a port; stopped when dropped.
pub struct Emulator {
    port: u16,
    child: Child,
}

impl Emulator {
    /// Starts the emulator on 127.0.0.1:`port` and waits until it answers.
    pub async fn start(port: u16, log: &Path) -> Result<Self, FunctionsError> {
        let log_file =
            std::fs::File::create(log).map_err(|source| FunctionsError::Spawn { what: "watch log".into(), source })?;
        let child = Command::new("cargo")
            .env("PATH", cargo_lambda_path())
            .current_dir(repo_root())
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "--ignore-changes",
                "-A",
                "127.0.0.1",
                "-P",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|source| FunctionsError::Spawn { what: "watch log".into(), source })?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| FunctionsError::Spawn { what: "cargo lambda watch".into(), source })?;
        let emulator = Self { port, child };
        // Any HTTP request would be taken for an invocation and wait for a function: only check
        // that the port accepts connections.
        for _ in 0..150 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(emulator);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(FunctionsError::EmulatorDown(emulator.url("/")))
    }

    /// A URL on the emulator.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The Invoke API of a function.
    pub fn invoke_url(&self, function: &str) -> String {
        self.url(&format!("/2015-03-31/functions/{function}/invocations"))
    }

    /// The function-URL path of an HTTP function.
    pub fn http_url(&self, function: &str, path: &str) -> String {
        self.url(&format!("/lambda-url/{function}{path}"))
    }

    /// Stops the emulator.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A running function process, restarted when it dies on its own (as Lambda starts a new
/// instance); killed when dropped.
pub struct FunctionProcess {
    inner: Arc<Inner>,
    supervisor: tokio::task::JoinHandle<()>,
}

struct Inner {
    name: String,
    env: HashMap<String, String>,
    emulator_port: u16,
    log: PathBuf,
    metrics: MetricTotals,
    child: Mutex<Option<Child>>,
}

impl FunctionProcess {
    /// Starts `name`'s binary against the emulator with `env` on top of the Lambda variables.
    /// Every stdout line goes to `log`; EMF documents are also added to `metrics`.
    pub async fn start(
        name: &str,
        env: HashMap<String, String>,
        emulator_port: u16,
        log: PathBuf,
        metrics: MetricTotals,
    ) -> Result<Self, FunctionsError> {
        let inner =
            Arc::new(Inner { name: name.to_owned(), env, emulator_port, log, metrics, child: Mutex::default() });
        inner.spawn().await?;
        let supervisor = tokio::spawn(supervise(inner.clone()));
        Ok(Self { inner, supervisor })
    }

    /// SIGKILL: no cleanup, no flush, exactly like a crashed or timed-out Lambda instance. The
    /// process stays down until [`Self::restart`].
    pub async fn kill(&self) {
        let child = self.inner.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = child {
            let _ = child.kill().await;
        }
    }

    /// Starts the function again after a kill (a new cold start).
    pub async fn restart(&self) -> Result<(), FunctionsError> {
        self.kill().await;
        self.inner.spawn().await
    }
}

impl Drop for FunctionProcess {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

/// Restarts the process when it exits on its own (a panic outside the handler: `lambda_runtime`
/// 1.5 panics, for one, on a runtime-API answer without a request id). On AWS a dead instance is
/// replaced by a new one, and so it is here; a deliberate [`FunctionProcess::kill`] is not undone.
async fn supervise(inner: Arc<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let exited = {
            let mut child = inner.child.lock().unwrap_or_else(|p| p.into_inner());
            match child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => {
                    *child = None;
                    Some(status)
                }
                _ => None,
            }
        };
        if let Some(status) = exited {
            eprintln!("{} exited on its own ({status}); starting a new instance", inner.name);
            if let Err(e) = inner.spawn().await {
                eprintln!("{} could not be restarted: {e}", inner.name);
            }
        }
    }
}

impl Inner {
    async fn spawn(&self) -> Result<(), FunctionsError> {
        let mut child = Command::new(binary(&self.name))
            .envs(&self.env)
            .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{}/.rt/{}", self.emulator_port, self.name))
            .env("AWS_LAMBDA_FUNCTION_NAME", &self.name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| FunctionsError::Spawn { what: self.name.clone(), source })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let mut log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .await
            .map_err(|source| FunctionsError::Spawn { what: format!("{} log", self.name), source })?;
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut out = BufReader::new(stdout).lines();
            let mut err = BufReader::new(stderr).lines();
            loop {
                let line = tokio::select! {
                    line = out.next_line() => line,
                    line = err.next_line() => line,
                };
                let Ok(Some(line)) = line else { break };
                metrics.ingest(&line);
                // One write per line: instances of one function share its log (appends of a
                // line at a time do not interleave).
                let _ = log.write_all(format!("{line}\n").as_bytes()).await;
            }
        });
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        Ok(())
    }
}
