use intake::{IntakeConfig, build};
use lambda_http::{Error, service_fn};
use payments_core::config::Env;

#[tokio::main]
async fn main() -> Result<(), Error> {
    payments_core::observability::init_json_logs("intake");
    let config = IntakeConfig::from_env(&Env::process())?;
    let intake = build(config, &payments_core::aws::load_config().await);
    lambda_http::run(service_fn(|request| intake.handle(request))).await
}
