//! Hiding a message for its backoff: the port the batch runner uses, the SQS adapter
//! (ChangeMessageVisibility), and a recording adapter for unit tests.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::QueueError;

/// Changes how long a received message stays invisible.
pub trait VisibilityControl: Send + Sync {
    /// Makes the message with `receipt_handle` (from the queue `queue_arn`) visible again after
    /// `after` (whole seconds, at most 12 hours).
    fn hide(
        &self,
        queue_arn: &str,
        receipt_handle: &str,
        after: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// ChangeMessageVisibility through the SQS API. Queue URLs are looked up from the ARN once and
/// cached.
#[cfg(feature = "sqs")]
#[derive(Debug, Clone)]
pub struct SqsVisibility {
    client: aws_sdk_sqs::Client,
    urls: Arc<Mutex<std::collections::HashMap<String, String>>>,
}

#[cfg(feature = "sqs")]
impl SqsVisibility {
    /// Over `client`; a queue's URL is looked up once per ARN and cached.
    pub fn new(client: aws_sdk_sqs::Client) -> Self {
        Self { client, urls: Arc::default() }
    }

    async fn queue_url(&self, queue_arn: &str) -> Result<String, QueueError> {
        if let Some(url) = self.urls.lock().unwrap_or_else(|p| p.into_inner()).get(queue_arn) {
            return Ok(url.clone());
        }
        // arn:aws:sqs:{region}:{account}:{name}
        let parts: Vec<&str> = queue_arn.split(':').collect();
        let [_, _, "sqs", _, account, name] = parts.as_slice() else {
            return Err(QueueError::Refused(format!("not an SQS queue ARN: {queue_arn}")));
        };
        let out = self
            .client
            .get_queue_url()
            .queue_name(*name)
            .queue_owner_aws_account_id(*account)
            .send()
            .await
            .map_err(|e| QueueError::from_sdk(&e))?;
        let url =
            out.queue_url().ok_or_else(|| QueueError::Transient("GetQueueUrl returned no URL".into()))?.to_owned();
        self.urls.lock().unwrap_or_else(|p| p.into_inner()).insert(queue_arn.to_owned(), url.clone());
        Ok(url)
    }
}

#[cfg(feature = "sqs")]
impl VisibilityControl for SqsVisibility {
    async fn hide(&self, queue_arn: &str, receipt_handle: &str, after: Duration) -> Result<(), QueueError> {
        let url = self.queue_url(queue_arn).await?;
        let seconds =
            i32::try_from(after.as_secs().min(super::backoff::SQS_MAX_VISIBILITY.as_secs())).unwrap_or(i32::MAX);
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| QueueError::from_sdk(&e))
    }
}

/// Messages calls instead of making them: for unit tests of code above the runner.
#[derive(Debug, Clone, Default)]
pub struct RecordingVisibility {
    calls: Arc<Mutex<Vec<(String, String, Duration)>>>,
}

impl RecordingVisibility {
    /// Every call so far: (queue ARN, receipt handle, delay).
    pub fn calls(&self) -> Vec<(String, String, Duration)> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl VisibilityControl for RecordingVisibility {
    async fn hide(&self, queue_arn: &str, receipt_handle: &str, after: Duration) -> Result<(), QueueError> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push((queue_arn.into(), receipt_handle.into(), after));
        Ok(())
    }
}
