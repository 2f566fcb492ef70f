//! What a queue port answers when SQS fails a call: whether it may work later, and what SQS said.

/// An SQS call that failed. The runner and the functions treat both kinds alike (the message is
/// kept for a later delivery), but logs and metrics tell a throttle from a refused request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// Throttling, timeouts, connection failures, 5xx: the same call may succeed later.
    #[error("SQS temporarily unavailable: {0}")]
    Transient(String),
    /// Access denied, no such queue, an invalid receipt handle or ARN: it will not.
    #[error("SQS refused the request: {0}")]
    Refused(String),
}

#[cfg(feature = "sqs")]
impl QueueError {
    /// Judges an SDK error by [`lambda_support::aws::errors::classify`].
    pub(crate) fn from_sdk<E>(err: &aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>) -> Self
    where
        E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        lambda_support::aws::errors::sort_error(err, Self::Transient, Self::Refused)
    }
}
