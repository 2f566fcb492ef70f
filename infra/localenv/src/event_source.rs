//! A stand-in for the SQS event source mapping, honouring the same contract as AWS: receive a
//! batch, hand it to the function as a real SQS event, delete the records the function did not
//! report failed, and leave failed ones to their visibility timeout.

use aws_lambda_events::sqs::{SqsBatchResponse, SqsMessage};
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};

/// Receives up to `max` messages (all system attributes, long-polling `wait_s` seconds).
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
        .send()
        .await
        .map_err(|e| format!("ReceiveMessage: {e:?}"))?;
    Ok(out.messages().to_vec())
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
    record.event_source_arn = Some(queue_arn.to_owned());
    record.event_source = Some("aws:sqs".to_owned());
    record.aws_region = queue_arn.split(':').nth(3).map(str::to_owned);
    record
}

/// Deletes every received message the response did not report failed (the partial batch
/// response contract). Returns how many were deleted.
pub async fn settle(
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
    let mut deleted = 0;
    for message in received {
        let (Some(id), Some(receipt)) = (message.message_id(), message.receipt_handle()) else { continue };
        if failed.contains(&id) {
            continue;
        }
        client
            .delete_message()
            .queue_url(queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| format!("DeleteMessage: {e:?}"))?;
        deleted += 1;
    }
    Ok(deleted)
}
