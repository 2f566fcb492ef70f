use dlq_consumer::{DlqConsumerConfig, build};
use lambda_runtime::{Error, service_fn};
use payments_core::config::Env;

#[tokio::main]
async fn main() -> Result<(), Error> {
    payments_core::observability::init_json_logs("dlq-consumer");
    let config = DlqConsumerConfig::from_env(&Env::process())?;
    let consumer = build(&config, &payments_core::aws::load_config().await)?;
    lambda_runtime::run(service_fn(|event| consumer.handle(event))).await
}
