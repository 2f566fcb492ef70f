use lambda_runtime::{Error, service_fn};
use lambda_support::env::Env;
use processor::{ProcessorConfig, build};

/// mimalloc: a fifth less CPU per message than the system allocator (docs/benchmark.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One thread: Lambda runs one invocation at a time per instance, and a batch's records are
/// concurrent futures, not parallel work; a single-threaded runtime saves the cross-thread
/// wake-ups that cost a quarter of the CPU per message (docs/benchmark.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_observability::init_json_logs("processor");
    let config = ProcessorConfig::from_env(&Env::process())?;
    let processor = build(&config, &lambda_support::aws::load_config().await)?;
    lambda_runtime::run(service_fn(|event| processor.handle(event))).await
}
