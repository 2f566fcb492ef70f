use completer::{CompleterConfig, build};
use lambda_runtime::{Error, service_fn};
use payments_core::config::Env;

#[tokio::main]
async fn main() -> Result<(), Error> {
    payments_core::observability::init_json_logs("completer");
    let config = CompleterConfig::from_env(&Env::process())?;
    let completer = build(&config, &payments_core::aws::load_config().await);
    lambda_runtime::run(service_fn(|event| completer.handle(event))).await
}
