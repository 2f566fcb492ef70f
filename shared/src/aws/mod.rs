//! What every AWS adapter shares: loading the SDK configuration and classifying SDK errors.

pub mod errors;

/// Loads the AWS configuration the standard way (environment, profile, role). `AWS_ENDPOINT_URL`
/// points every client at LocalStack in local runs; production code has no endpoint special case.
pub async fn load_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}
