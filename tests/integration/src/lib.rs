//! What the LocalStack tests share: an AWS configuration pointed at LocalStack (started if
//! needed), and the template's resources deployed once per test process.

use std::sync::OnceLock;

use localenv::stack::Stack;

/// SDK configuration for LocalStack. Each test builds its own clients from it, on its own
/// runtime (a client's connection pool must not outlive the runtime that created it).
pub async fn aws() -> aws_config::SdkConfig {
    if let Err(e) = localenv::localstack::ensure() {
        panic!("LocalStack is not available: {e}");
    }
    lambda_support::aws::load_config().await
}

/// The template deployed into LocalStack once for this test process; tests keep apart by using
/// their own scopes and keys. Tests that need queues of their own deploy their own stack.
pub fn shared_stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            runtime.block_on(async {
                let config = aws().await;
                localenv::stack::deploy(&config, &localenv::stack::unique_name("it"), &[])
                    .await
                    .expect("template deploys into LocalStack")
            })
        })
        .join()
        .expect("stack deployment thread")
    })
}

/// A fresh stack of this test's own (its own queues), with parameter overrides.
pub async fn own_stack(config: &aws_config::SdkConfig, overrides: &[(&str, &str)]) -> Stack {
    localenv::stack::deploy(config, &localenv::stack::unique_name("it"), overrides)
        .await
        .expect("template deploys into LocalStack")
}

/// A scope no other test uses.
pub fn unique_scope(label: &str) -> lambda_idempotency::Scope {
    lambda_idempotency::Scope::new(&format!("{label}-{}", uuid_like())).expect("valid scope")
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}{:x}", nanos, COUNTER.fetch_add(1, Ordering::Relaxed))
}

pub mod http;
pub mod pipeline;
pub mod rare_paths;
