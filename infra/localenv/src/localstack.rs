//! Makes sure a LocalStack answers, starting one through `infra/localstack/localstack.sh` when
//! none does, and leaving a running one alone.

use std::process::Command;
use std::sync::OnceLock;

use crate::{cache_dir, repo_root};

/// Local AWS endpoint and dummy credentials, as LocalStack expects them.
pub const DEFAULT_PORT: u16 = 4566;

/// Why LocalStack could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum LocalStackError {
    /// The control script failed (its stderr says why: a missing prerequisite, a taken port).
    #[error("infra/localstack/localstack.sh ensure failed ({status}):\n{stderr}")]
    Script {
        /// Exit status.
        status: String,
        /// What the script printed.
        stderr: String,
    },
    /// The script could not be run at all.
    #[error("could not run infra/localstack/localstack.sh: {0}")]
    Spawn(#[from] std::io::Error),
}

/// The endpoint this process talks to: `AWS_ENDPOINT_URL` when set, else LocalStack's default.
pub fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| format!("http://127.0.0.1:{}", port()))
}

fn port() -> u16 {
    std::env::var("LOCALSTACK_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(DEFAULT_PORT)
}

/// Points this process's AWS SDK at LocalStack (unless the caller already chose an endpoint) and
/// ensures LocalStack is up. Safe to call from many tests and many processes at once: the script
/// runs under a file lock, and a healthy LocalStack is left alone. Runs once per process.
pub fn ensure() -> Result<(), &'static LocalStackError> {
    static READY: OnceLock<Result<(), LocalStackError>> = OnceLock::new();
    READY.get_or_init(start_if_needed).as_ref().map(|_| ())
}

fn start_if_needed() -> Result<(), LocalStackError> {
    // SAFETY: called once, under OnceLock, before this process creates any AWS client; the
    // variables only fill in what the caller left unset.
    unsafe {
        for (name, value) in [
            ("AWS_ENDPOINT_URL", endpoint().as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            // LocalStack under load is slower than DynamoDB: the same longer timeouts as ./dev.
            ("AWS_SDK_ATTEMPT_TIMEOUT_MS", "5000"),
            ("AWS_SDK_OPERATION_TIMEOUT_MS", "15000"),
        ] {
            if std::env::var_os(name).is_none() {
                std::env::set_var(name, value);
            }
        }
    }
    run_ensure()
}

/// `localstack.sh ensure` under a lock: sets LocalStack up and starts it unless one answers.
fn run_ensure() -> Result<(), LocalStackError> {
    let root = repo_root();
    let lock = cache_dir().join("localstack-ensure.lock");
    std::fs::create_dir_all(lock.parent().expect("lock path has a parent"))?;
    // `-o`: the lock's descriptor is closed for the script, so a LocalStack it starts in the
    // background does not inherit it (and hold the lock, blocking every later test process).
    let output = Command::new("flock")
        .arg("-o")
        .arg(&lock)
        .arg(root.join("infra/localstack/localstack.sh"))
        .arg("ensure")
        .env("LOCALSTACK_PORT", port().to_string())
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(LocalStackError::Script {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// The pipelines of this process using LocalStack, and whether this process started it: the
/// last one to finish stops it, not the first (several pipelines run at once in one test
/// binary, and the first to finish used to stop LocalStack under the others).
static USERS: std::sync::Mutex<Users> = std::sync::Mutex::new(Users { count: 0, started_here: false, stopped: false });

struct Users {
    count: usize,
    started_here: bool,
    /// This process stopped it once already: a later first use must start it again.
    stopped: bool,
}

/// A use of LocalStack by one pipeline: LocalStack is started for the first use in this process
/// if none answers, and stopped after the last use ([`OwnedLocalStack::stop`]) if it was started
/// here; one that was already running is left alone.
pub struct OwnedLocalStack {
    started_here: bool,
}

impl OwnedLocalStack {
    /// Uses a running LocalStack, or starts one and remembers to stop it after the last use.
    pub fn acquire() -> Result<Self, LocalStackError> {
        let mut users = USERS.lock().unwrap_or_else(|p| p.into_inner());
        if users.count == 0 {
            let healthy = Command::new("curl")
                .args(["-fsS", "--max-time", "2", &format!("{}/_localstack/health", endpoint())])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            users.started_here = !healthy;
        }
        ensure().map_err(|e| LocalStackError::Script { status: "ensure".into(), stderr: e.to_string() })?;
        if users.count == 0 && users.stopped {
            run_ensure()?;
        }
        users.count += 1;
        Ok(Self { started_here: users.started_here })
    }

    /// Whether this process started it.
    pub fn started_here(&self) -> bool {
        self.started_here
    }

    /// Ends this use; the last use stops LocalStack if this process started it.
    pub fn stop(self) {
        let mut users = USERS.lock().unwrap_or_else(|p| p.into_inner());
        users.count = users.count.saturating_sub(1);
        if users.count == 0 && users.started_here {
            (users.started_here, users.stopped) = (false, true);
            let _ = Command::new(repo_root().join("infra/localstack/localstack.sh"))
                .arg("stop")
                .env("LOCALSTACK_PORT", port().to_string())
                .status();
        }
    }
}
