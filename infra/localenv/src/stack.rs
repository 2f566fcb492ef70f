//! Deploys `template.yaml` into LocalStack with `DeployFunctions=false`: the same template as in
//! AWS provisions the tables, queues, dashboard and alarms; the functions run under
//! `cargo lambda watch` instead.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_cloudformation::types::{Capability, Parameter, StackStatus};

use crate::repo_root;

/// The deployed stack's outputs, by output key.
#[derive(Debug, Clone)]
pub struct Stack {
    /// The stack name (also the prefix of every resource name).
    pub name: String,
    outputs: HashMap<String, String>,
}

impl Stack {
    /// An output's value.
    pub fn output(&self, key: &str) -> &str {
        self.outputs.get(key).unwrap_or_else(|| panic!("stack {} has no output {key}", self.name))
    }

    /// Table of idempotency records.
    pub fn idempotency_table(&self) -> &str {
        self.output("IdempotencyTableName")
    }

    /// Table of failure records.
    pub fn failures_table(&self) -> &str {
        self.output("FailuresTableName")
    }

    /// The payments queue.
    pub fn queue_url(&self) -> &str {
        self.output("PaymentsQueueUrl")
    }

    /// The payments queue's ARN.
    pub fn queue_arn(&self) -> &str {
        self.output("PaymentsQueueArn")
    }

    /// The dead-letter queue.
    pub fn dlq_url(&self) -> &str {
        self.output("DeadLetterQueueUrl")
    }

    /// The dead-letter queue's ARN.
    pub fn dlq_arn(&self) -> &str {
        self.output("DeadLetterQueueArn")
    }

    /// The secret holding the provider's API key.
    pub fn provider_key_secret(&self) -> &str {
        self.output("ProviderApiKeySecretArn")
    }

    /// The provider's API, as the stack was deployed with it (`ProviderBaseUrl`).
    pub fn provider_base_url(&self) -> &str {
        self.output("ProviderBaseUrl")
    }
}

/// Why the stack could not be deployed.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// Reading the template.
    #[error("reading template.yaml: {0}")]
    Template(#[from] std::io::Error),
    /// A CloudFormation call failed.
    #[error("CloudFormation: {0}")]
    Api(String),
    /// The stack ended in a failed state.
    #[error("stack {name} ended {status}: {reason}")]
    Failed {
        /// Stack name.
        name: String,
        /// Final status.
        status: String,
        /// Failed resources and their reasons.
        reason: String,
    },
}

/// The template as `sam package` would hand it to CloudFormation: local `CodeUri` paths become
/// S3 locations (never fetched, since the functions are conditioned out locally).
pub fn packaged_template() -> Result<String, std::io::Error> {
    let text = std::fs::read_to_string(repo_root().join("template.yaml"))?;
    Ok(text
        .lines()
        .map(|line| match line.trim_start().strip_prefix("CodeUri: functions/") {
            Some(name) => {
                format!("{}CodeUri: s3://local-code/{name}.zip", &line[..line.len() - line.trim_start().len()])
            }
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The provider URL a local stack is deployed with when the caller names none: the template
/// requires one, and nothing local calls it (`.invalid` never resolves, RFC 2606).
pub const NO_PROVIDER: &str = "https://provider.example.invalid";

/// Creates stack `name` with the given parameter overrides (and `DeployFunctions=false`, and
/// [`NO_PROVIDER`] unless `ProviderBaseUrl` is given), waits for it, and returns its outputs. An
/// existing stack of that name is reused as it is.
pub async fn deploy(
    config: &aws_config::SdkConfig,
    name: &str,
    overrides: &[(&str, &str)],
) -> Result<Stack, StackError> {
    let cfn = aws_sdk_cloudformation::Client::new(config);
    let exists = cfn.describe_stacks().stack_name(name).send().await.is_ok();
    if !exists {
        let mut create = cfn
            .create_stack()
            .stack_name(name)
            .template_body(packaged_template()?)
            .capabilities(Capability::CapabilityIam)
            .capabilities(Capability::CapabilityAutoExpand)
            .parameters(Parameter::builder().parameter_key("DeployFunctions").parameter_value("false").build());
        let provider = ("ProviderBaseUrl", NO_PROVIDER);
        let defaults = (!overrides.iter().any(|(key, _)| *key == provider.0)).then_some(provider);
        for (key, value) in overrides.iter().chain(defaults.iter()) {
            create = create.parameters(Parameter::builder().parameter_key(*key).parameter_value(*value).build());
        }
        create.send().await.map_err(|e| StackError::Api(format!("{e:?}")))?;
    }
    for _ in 0..600 {
        let described =
            cfn.describe_stacks().stack_name(name).send().await.map_err(|e| StackError::Api(format!("{e:?}")))?;
        let stack = described.stacks().first().ok_or_else(|| StackError::Api(format!("stack {name} vanished")))?;
        match stack.stack_status() {
            // LocalStack can end a stack "complete" with a resource failed and no outputs.
            Some(StackStatus::CreateComplete | StackStatus::UpdateComplete) if !stack.outputs().is_empty() => {
                let outputs = stack
                    .outputs()
                    .iter()
                    .filter_map(|o| Some((o.output_key()?.to_owned(), o.output_value()?.to_owned())))
                    .collect();
                return Ok(Stack { name: name.to_owned(), outputs });
            }
            Some(StackStatus::CreateInProgress | StackStatus::UpdateInProgress) | None => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(other) => {
                let events = cfn.describe_stack_events().stack_name(name).send().await.ok();
                let failed_resources = events.iter().flat_map(|e| e.stack_events()).filter_map(|ev| {
                    let failed = ev.resource_status().is_some_and(|s| s.as_str().contains("FAILED"));
                    let reason = ev.resource_status_reason().filter(|r| !r.is_empty())?;
                    failed.then(|| format!("{}: {reason}", ev.logical_resource_id().unwrap_or("?")))
                });
                let reason = stack
                    .stack_status_reason()
                    .map(str::to_owned)
                    .into_iter()
                    .chain(failed_resources)
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(StackError::Failed { name: name.to_owned(), status: other.as_str().to_owned(), reason });
            }
        }
    }
    Err(StackError::Api(format!("stack {name} did not finish within 120 s")))
}

/// The outputs of an existing stack (in LocalStack or in AWS, whichever the SDK points at).
pub async fn describe(config: &aws_config::SdkConfig, name: &str) -> Result<Stack, StackError> {
    let cfn = aws_sdk_cloudformation::Client::new(config);
    let described =
        cfn.describe_stacks().stack_name(name).send().await.map_err(|e| StackError::Api(format!("{e:?}")))?;
    let stack = described.stacks().first().ok_or_else(|| StackError::Api(format!("no stack {name}")))?;
    let outputs = stack
        .outputs()
        .iter()
        .filter_map(|o| Some((o.output_key()?.to_owned(), o.output_value()?.to_owned())))
        .collect();
    Ok(Stack { name: name.to_owned(), outputs })
}

/// A fresh stack name for one test or run: `{prefix}-{8 hex}` (queue names stay under 80 chars).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}
