//! A stand-in for the SQS event source mapping, honouring the same contract as AWS: receive a
//! batch, hand it to the function as a real SQS event, delete the records the function did not
//! report failed, and leave failed ones to their visibility timeout.

use aws_lambda_events::sqs::{SqsBatchResponse, SqsMessage, SqsMessageAttribute};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName};

/// Receives up to `max` messages (all system and message attributes, long-polling `wait_s`
/// seconds).
pub async fn receive(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    max: i32,
    wait_s: i32,
) -> Result<Vec<Message>, String> {
    let out = client
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(max.clamp(1, 10))
        .wait_time_seconds(wait_s)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await
        .map_err(|e| format!("ReceiveMessage: {e:?}"))?;
    Ok(out.messages().to_vec())
}

/// Messages in the queue, visible plus in flight: zero once everything sent has been settled.
pub async fn queue_depth(client: &aws_sdk_sqs::Client, queue_url: &str) -> Result<u64, String> {
    let out = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(|e| format!("GetQueueAttributes: {e:?}"))?;
    Ok(out.attributes().map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum()).unwrap_or(0))
}

/// The record Lambda would pass for `message` received from `queue_arn`.
pub fn lambda_record(message: &Message, queue_arn: &str) -> SqsMessage {
    let mut record = SqsMessage::default();
    record.message_id = message.message_id().map(str::to_owned);
    record.receipt_handle = message.receipt_handle().map(str::to_owned);
    record.body = message.body().map(str::to_owned);
    record.md5_of_body = message.md5_of_body().map(str::to_owned);
    record.attributes = message
        .attributes()
        .map(|a| a.iter().map(|(k, v)| (k.as_str().to_owned(), v.clone())).collect())
        .unwrap_or_default();
    record.message_attributes = message
        .message_attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| {
                    let mut attribute = SqsMessageAttribute::default();
                    attribute.string_value = v.string_value().map(str::to_owned);
                    attribute.data_type = Some(v.data_type().to_owned());
                    (k.clone(), attribute)
                })
                .collect()
        })
        .unwrap_or_default();
    record.event_source_arn = Some(queue_arn.to_owned());
    record.event_source = Some("aws:sqs".to_owned());
    record.aws_region = queue_arn.split(':').nth(3).map(str::to_owned);
    record
}

/// Deletes every received message the response did not report failed (the partial batch
/// response contract). Returns how many were deleted.
pub async fn delete_handled(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    received: &[Message],
    response: &SqsBatchResponse,
) -> Result<usize, String> {
    let failed: Vec<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
    if failed.iter().any(|id| id.is_empty()) {
        // An unnamed failure fails the whole batch.
        return Ok(0);
    }
    // One DeleteMessageBatch (at most 10 entries, as a receive returns), as the event source
    // mapping does: the time between two batches is time the provider is not called.
    let entries: Vec<DeleteMessageBatchRequestEntry> = received
        .iter()
        .filter(|m| m.message_id().is_some_and(|id| !failed.contains(&id)))
        .filter_map(|m| {
            DeleteMessageBatchRequestEntry::builder()
                .id(m.message_id()?)
                .receipt_handle(m.receipt_handle()?)
                .build()
                .ok()
        })
        .collect();
    if entries.is_empty() {
        return Ok(0);
    }
    let out = client
        .delete_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| format!("DeleteMessageBatch: {e:?}"))?;
    let deleted = out.successful().len();
    Ok(deleted)
}

/// Where a poller reads and which function it drives.
#[derive(Debug, Clone)]
pub struct PollerConfig {
    /// The queue.
    pub queue_url: String,
    /// Its ARN (put in every record, as Lambda does).
    pub queue_arn: String,
    /// The function's Invoke API URL.
    pub invoke_url: String,
    /// Messages per batch (1–10).
    pub batch_size: i32,
    /// How long an invocation may take before the poller gives up on it (the messages then
    /// come back after their visibility timeout, as in AWS).
    pub invoke_timeout: std::time::Duration,
}

/// What a poller has done so far.
#[derive(Debug, Default)]
pub struct PollerStats {
    /// Invocations made.
    pub batches: std::sync::atomic::AtomicU64,
    /// Messages handed to the function.
    pub messages: std::sync::atomic::AtomicU64,
    /// Messages deleted after success.
    pub deleted: std::sync::atomic::AtomicU64,
    /// Messages reported failed (left to their visibility timeout).
    pub failed: std::sync::atomic::AtomicU64,
    /// Invocations that errored or timed out (whole batch left to its visibility timeout).
    pub invoke_errors: std::sync::atomic::AtomicU64,
    /// Whether an invocation is running now.
    pub in_flight: std::sync::atomic::AtomicBool,
}

/// Polls until `stop` is set: receive, invoke the function with a real SQS event, delete what
/// succeeded. One batch at a time, like an event source mapping at concurrency 1. Like a mapping
/// being created, it first reads the queue's attributes (the permission AWS requires of the
/// function's role for a mapping, besides receiving and deleting).
pub fn spawn_poller(
    sqs: aws_sdk_sqs::Client,
    config: PollerConfig,
    stats: std::sync::Arc<PollerStats>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering::Relaxed;
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        if let Err(e) = queue_depth(&sqs, &config.queue_url).await {
            tracing::warn!(error = e, "the queue's attributes could not be read");
        }
        while !stop.load(Relaxed) {
            let received = match receive(&sqs, &config.queue_url, config.batch_size, 1).await {
                Ok(received) => received,
                Err(e) => {
                    tracing::warn!(error = e, "receive failed");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    continue;
                }
            };
            if received.is_empty() {
                continue;
            }
            let mut event = aws_lambda_events::sqs::SqsEvent::default();
            event.records = received.iter().map(|m| lambda_record(m, &config.queue_arn)).collect();
            stats.batches.fetch_add(1, Relaxed);
            stats.messages.fetch_add(received.len() as u64, Relaxed);
            stats.in_flight.store(true, Relaxed);
            let answer = http.post(&config.invoke_url).json(&event).timeout(config.invoke_timeout).send().await;
            let response = match answer {
                Ok(r) if r.status().is_success() => r.json::<SqsBatchResponse>().await.ok(),
                _ => None,
            };
            stats.in_flight.store(false, Relaxed);
            let Some(response) = response else {
                stats.invoke_errors.fetch_add(1, Relaxed);
                continue;
            };
            match delete_handled(&sqs, &config.queue_url, &received, &response).await {
                Ok(deleted) => {
                    stats.deleted.fetch_add(deleted as u64, Relaxed);
                    stats.failed.fetch_add((received.len() - deleted) as u64, Relaxed);
                }
                Err(e) => tracing::warn!(error = e, "delete failed; the messages come back"),
            }
        }
    })
}

/// What the scheduler stand-in has done so far.
#[derive(Debug, Default)]
pub struct ScheduleStats {
    /// Invocations that answered.
    pub runs: std::sync::atomic::AtomicU64,
    /// Invocations that errored or timed out.
    pub errors: std::sync::atomic::AtomicU64,
}

/// A stand-in for an EventBridge Scheduler rule: invokes the function with `{}` every `every`
/// until `stop` is set, one invocation at a time (the template reserves a concurrency of one).
pub fn spawn_schedule(
    invoke_url: String,
    every: std::time::Duration,
    stats: std::sync::Arc<ScheduleStats>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering::Relaxed;
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        while !stop.load(Relaxed) {
            tokio::time::sleep(every).await;
            let answer = http.post(&invoke_url).body("{}").timeout(std::time::Duration::from_secs(60)).send().await;
            let counter = match answer {
                Ok(r) if r.status().is_success() => &stats.runs,
                _ => &stats.errors,
            };
            counter.fetch_add(1, Relaxed);
        }
    })
}
