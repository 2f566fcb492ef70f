//! What an operator does with failures: redrive one record (re-enqueue its original body, whose
//! idempotency key makes a second execution impossible), redrive every open record, move
//! whatever is still in the dead-letter queue back (SQS StartMessageMoveTask), or mark a record
//! resolved. Bulk actions take a dry-run flag; the CLI defaults it to on.
//!
//! A redrive asks the provider first. Charged: the payment is completed with that charge and
//! nothing is re-sent. Not charged: re-sent. Unknown: re-sent only while the provider still
//! remembers the idempotency key (its key window, from the payment's acceptance), since past it
//! a re-send of a charged payment would be a second charge; otherwise refused with the reason.

use std::time::Duration;

use super::record::{FailureKind, FailureRecord, FailureState, FailureStore, FailureStoreError};
use crate::aws::errors::classify;
use crate::clock::epoch_ms;
use crate::idempotency::IdempotencyStore;
use crate::payment::{OutcomeResolver, PaymentGateway, PaymentMessage, Resolution};

/// Why an operator action failed.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// No such record.
    #[error("no failure record {partition} / {message_id}")]
    NotFound {
        /// Partition key.
        partition: String,
        /// Message id.
        message_id: String,
    },
    /// The record is resolved already.
    #[error("failure record {0} is already resolved")]
    AlreadyResolved(String),
    /// A poison message would fail the same way again; redrive it only with `force`.
    #[error("failure record {0} is a poison message: it cannot succeed as it is (use force to send it anyway)")]
    Poison(String),
    /// The failure store.
    #[error(transparent)]
    Store(#[from] FailureStoreError),
    /// SQS.
    #[error("SQS: {0}")]
    Sqs(String),
    /// The provider cannot say whether the payment was charged, and its key window is over: a
    /// re-send could charge a second time.
    #[error(
        "failure record {record}: the provider cannot say whether it charged ({detail}), and the payment is \
         older than the provider's key window ({window_hours} h): not re-sent; check with the provider, then resolve"
    )]
    OutcomeUnknown {
        /// The record.
        record: String,
        /// Why the lookup gave no answer.
        detail: String,
        /// The key window assumed.
        window_hours: u64,
    },
}

/// What a redrive did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redriven {
    /// The record.
    pub partition: String,
    /// Its message id.
    pub message_id: String,
    /// The new message's id (`None` in a dry run, or when the payment was found charged).
    pub new_message_id: Option<String>,
    /// The charge the provider turned out to hold: the payment is completed with it, not re-sent.
    pub found_charge: Option<String>,
}

/// Operator actions over the failures table and the queues.
pub struct Redriver<F, S, G> {
    /// The failure store.
    pub failures: F,
    /// Asks the provider before anything is re-sent.
    pub resolver: OutcomeResolver<S, G>,
    /// How long the provider remembers an idempotency key (Stripe: at least 24 hours).
    pub key_window: Duration,
    /// SQS.
    pub sqs: aws_sdk_sqs::Client,
    /// The payments queue (where redriven bodies go).
    pub queue_url: String,
    /// The payments queue's ARN (destination of a DLQ move).
    pub queue_arn: String,
    /// The dead-letter queue's ARN (source of a DLQ move).
    pub dlq_arn: String,
}

impl<F: FailureStore, S: IdempotencyStore, G: PaymentGateway> Redriver<F, S, G> {
    /// Re-enqueues one record's original body, then marks the record resolved, unless the
    /// provider turns out to hold the payment's charge (see the module). Sending first means a
    /// crash in between leaves the record open and a second redrive harmless (the processor
    /// deduplicates by key); the reverse order could lose the payment.
    pub async fn redrive_record(
        &self,
        partition: &str,
        message_id: &str,
        force: bool,
        now_ms: i64,
    ) -> Result<Redriven, RedriveError> {
        let record = self.failures.get(partition, message_id).await?.ok_or_else(|| RedriveError::NotFound {
            partition: partition.to_owned(),
            message_id: message_id.to_owned(),
        })?;
        self.check(&record, force)?;
        let done = |new_message_id, found_charge| Redriven {
            partition: partition.to_owned(),
            message_id: message_id.to_owned(),
            new_message_id,
            found_charge,
        };
        if let Some(charge_id) = self.charged_already(&record, now_ms).await? {
            let note = format!("resolved: charged ({charge_id}); the payment is completed with it, not re-sent");
            self.failures.resolve(partition, message_id, &note, now_ms).await?;
            return Ok(done(None, Some(charge_id)));
        }
        let new_message_id = self.send(&record).await?;
        self.failures.resolve(partition, message_id, &format!("redriven as message {new_message_id}"), now_ms).await?;
        Ok(done(Some(new_message_id), None))
    }

    /// The charge the provider holds for the record's payment, if any; an error when it cannot
    /// say and a re-send would no longer be covered by its key window.
    async fn charged_already(&self, record: &FailureRecord, now_ms: i64) -> Result<Option<String>, RedriveError> {
        let Ok(payment) = PaymentMessage::parse(&record.body) else { return Ok(None) };
        match self.resolver.resolve(&payment).await {
            Resolution::Charged(charge_id) => Ok(Some(charge_id)),
            Resolution::NotCharged => Ok(None),
            Resolution::Unknown(detail) => {
                let accepted = humantime::parse_rfc3339(&payment.created_at).map(epoch_ms).unwrap_or(0);
                let age = Duration::from_millis(u64::try_from(now_ms - accepted).unwrap_or(0));
                if age < self.key_window {
                    return Ok(None);
                }
                Err(RedriveError::OutcomeUnknown {
                    record: format!("{} / {}", record.partition, record.message_id),
                    detail,
                    window_hours: self.key_window.as_secs() / 3600,
                })
            }
        }
    }

    /// Redrives every open dead-letter record (poison records are left for an operator to judge).
    pub async fn redrive_open(&self, dry_run: bool, now_ms: i64) -> Result<Vec<Redriven>, RedriveError> {
        let open: Vec<FailureRecord> =
            self.failures.list(true).await?.into_iter().filter(|r| r.kind == FailureKind::DeadLetter).collect();
        let mut done = Vec::with_capacity(open.len());
        for record in open {
            if dry_run {
                done.push(Redriven {
                    partition: record.partition,
                    message_id: record.message_id,
                    new_message_id: None,
                    found_charge: None,
                });
            } else {
                done.push(self.redrive_record(&record.partition, &record.message_id, false, now_ms).await?);
            }
        }
        Ok(done)
    }

    /// Moves whatever is still in the dead-letter queue back to the payments queue (messages the
    /// DLQ consumer has not recorded yet, e.g. while it was disabled). Returns the number of
    /// messages in the DLQ and, unless a dry run, the move task's handle.
    pub async fn move_dlq(&self, dry_run: bool) -> Result<(u64, Option<String>), RedriveError> {
        let dlq_url = self
            .sqs
            .get_queue_url()
            .queue_name(self.dlq_arn.rsplit(':').next().unwrap_or_default())
            .send()
            .await
            .map_err(|e| RedriveError::Sqs(classify(&e).description))?
            .queue_url()
            .unwrap_or_default()
            .to_owned();
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(dlq_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| RedriveError::Sqs(classify(&e).description))?;
        let waiting = attributes
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if dry_run || waiting == 0 {
            return Ok((waiting, None));
        }
        let task = self
            .sqs
            .start_message_move_task()
            .source_arn(&self.dlq_arn)
            .destination_arn(&self.queue_arn)
            .send()
            .await
            .map_err(|e| RedriveError::Sqs(classify(&e).description))?;
        Ok((waiting, task.task_handle().map(str::to_owned)))
    }

    /// Marks a record resolved without redriving it (the operator settled it another way).
    pub async fn resolve(
        &self,
        partition: &str,
        message_id: &str,
        note: &str,
        now_ms: i64,
    ) -> Result<(), RedriveError> {
        if self.failures.resolve(partition, message_id, note, now_ms).await? {
            return Ok(());
        }
        match self.failures.get(partition, message_id).await? {
            None => Err(RedriveError::NotFound { partition: partition.to_owned(), message_id: message_id.to_owned() }),
            Some(_) => Err(RedriveError::AlreadyResolved(format!("{partition} / {message_id}"))),
        }
    }

    fn check(&self, record: &FailureRecord, force: bool) -> Result<(), RedriveError> {
        let name = format!("{} / {}", record.partition, record.message_id);
        if record.state != FailureState::Open {
            return Err(RedriveError::AlreadyResolved(name));
        }
        if record.kind == FailureKind::Poison && !force {
            return Err(RedriveError::Poison(name));
        }
        Ok(())
    }

    async fn send(&self, record: &FailureRecord) -> Result<String, RedriveError> {
        let sent = self
            .sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(&record.body)
            .send()
            .await
            .map_err(|e| RedriveError::Sqs(classify(&e).description))?;
        Ok(sent.message_id().unwrap_or_default().to_owned())
    }
}
