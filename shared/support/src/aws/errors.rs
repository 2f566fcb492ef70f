//! One classification of AWS SDK errors into "try again" and "do not", used by every adapter
//! of every service (their operations all fail with the same `SdkError` shape).

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// Service error codes that mean "later": throttling, capacity, internal faults.
const RETRYABLE_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
    "RequestThrottled",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "TransactionConflictException",
    "KMSThrottlingException",
    "AWS.SimpleQueueService.RequestThrottled",
];

/// An SDK error judged: whether it is worth retrying, and a one-line description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// Throttling, timeouts, connection failures and 5xx are; everything else is not.
    pub retryable: bool,
    /// Code and message, for logs and stored reasons.
    pub description: String,
}

/// Judges any AWS SDK error (every service's operations return this shape).
pub fn classify<E>(err: &SdkError<E, HttpResponse>) -> Classified
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (retryable, description) = match err {
        SdkError::TimeoutError(_) => (true, "timeout".to_owned()),
        SdkError::DispatchFailure(f) => (true, format!("dispatch failure: {f:?}")),
        SdkError::ResponseError(_) => (true, "unreadable response".to_owned()),
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("Unknown");
            let message = e.message().unwrap_or("");
            let retryable = RETRYABLE_CODES.contains(&code) || service.raw().status().is_server_error();
            (retryable, format!("{code}: {message}"))
        }
        _ => (false, err.to_string()),
    };
    Classified { retryable, description }
}

/// Maps an SDK error to an adapter's own error type, by whether it is worth retrying.
pub fn sort_error<E, T>(err: &SdkError<E, HttpResponse>, transient: fn(String) -> T, permanent: fn(String) -> T) -> T
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let judged = classify(err);
    if judged.retryable { transient(judged.description) } else { permanent(judged.description) }
}
