use lambda_runtime::{Error, service_fn};
use payments_core::config::Env;
use processor::{ProcessorConfig, build};

#[tokio::main]
async fn main() -> Result<(), Error> {
    payments_core::observability::init_json_logs("processor");
    let config = ProcessorConfig::from_env(&Env::process())?;
    let processor = build(&config, &payments_core::aws::load_config().await)?;
    lambda_runtime::run(service_fn(|event| processor.handle(event))).await
}
