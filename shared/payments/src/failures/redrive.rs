//! What an operator does with failures: redrive one record, redrive every open record, move
//! whatever is still in the dead-letter queue back (SQS StartMessageMoveTask), or close a record
//! without redriving it. Bulk actions take a dry-run flag; the CLI defaults it to on.
//!
//! **A redrive sends exactly what was accepted**: the message the intake enqueued, as the failure
//! record kept it (`accepted_message`, only for a valid payment message) or as the intake's record
//! keeps it (`input`), never the failure record's body (which is redacted for people to read:
//! every run of 12 or more digits, an AWS account ID used as the scope included, is
//! `[redacted]`). So the redriven message has the payment's record key, provider idempotency key
//! and payload hash, and finds the payment's own records.
//!
//! A redrive asks the provider first. Charged: the payment is completed with that charge and
//! nothing is re-sent. Not charged: re-sent. Unknown: re-sent only while the provider still
//! remembers the idempotency key (its key window, from the payment's acceptance), since past it
//! a re-send of a charged payment would be a second charge; otherwise refused with the reason.
//! The provider refusing the API key stops the redrive: nothing can be known until it is fixed.
//!
//! A re-sent payment carries a [`RedriveGrant`] (a fresh retry budget), and its failure record
//! stays open, marked redriven, until the payment reaches a terminal state: the processor
//! closes it then (the payment shows PROCESSING meanwhile, DEAD_LETTERED again if it dies
//! again).

use std::time::Duration;

use super::record::{FailureKind, FailureRecord, FailureState, FailureStore, FailureStoreError, Redrive};
use crate::payment::{
    EnqueueError, OutcomeResolver, PaymentGateway, PaymentMessage, PaymentQueue, RedriveGrant, Resolution, intake_key,
    process_key,
};
use lambda_idempotency::{IdempotencyStore, StoreError};
use lambda_support::aws::errors::classify;
use lambda_support::clock::epoch_ms;

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
    /// The record is closed already.
    #[error("failure record {0} is already closed")]
    AlreadyClosed(String),
    /// A poison message would fail the same way again; redrive it only with `force`.
    #[error("failure record {0} is a poison message: it cannot succeed as it is (use force to send it anyway)")]
    Poison(String),
    /// The record names no payment (its body could not be read that far): nothing to send.
    #[error("failure record {0} names no payment: there is nothing the intake accepted to send again")]
    NotAPayment(String),
    /// The intake's record of the payment, or the message it keeps, is gone (expired, or
    /// accepted before the intake kept it): the exact message cannot be sent, and a redacted
    /// body is never sent in its place.
    #[error(
        "failure record {0}: the intake's record no longer holds the message it accepted; ask the client to \
         submit the payment again with the same key, then close this record"
    )]
    NoAcceptedMessage(String),
    /// The failure store.
    #[error(transparent)]
    Store(#[from] FailureStoreError),
    /// The idempotency records.
    #[error("idempotency records: {0}")]
    Records(#[from] StoreError),
    /// Sending to the payments queue.
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
    /// SQS.
    #[error("SQS: {0}")]
    Sqs(String),
    /// The provider cannot say whether the payment was charged, and its key window is over: a
    /// re-send could charge a second time.
    #[error(
        "failure record {record}: the provider cannot say whether it charged ({detail}), and the payment is \
         older than the provider's key window ({window_hours} h): not re-sent; check with the provider, then close it"
    )]
    OutcomeUnknown {
        /// The record.
        record: String,
        /// Why the lookup gave no answer.
        detail: String,
        /// The key window assumed.
        window_hours: u64,
    },
    /// The provider refused the API key the redrive asked with: nothing is known of the payment.
    #[error("failure record {record}: {detail}; nothing was re-sent")]
    ProviderRefusedKey {
        /// The record.
        record: String,
        /// The provider's refusal.
        detail: String,
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

/// Operator actions over the failure records, the payments' records and the payments queue.
pub struct Redriver<F, S, G, Q> {
    failures: F,
    resolver: OutcomeResolver<S, G>,
    queue: Q,
    key_window: Duration,
}

impl<F: FailureStore, S: IdempotencyStore, G: PaymentGateway, Q: PaymentQueue> Redriver<F, S, G, Q> {
    /// Over the failure records, the provider (asked through `resolver`, whose idempotency guard
    /// reads the payments' records), the payments `queue`, and the provider's `key_window` (how
    /// long it remembers an idempotency key; Stripe: at least 24 hours).
    pub fn new(failures: F, resolver: OutcomeResolver<S, G>, queue: Q, key_window: Duration) -> Self {
        Self { failures, resolver, queue, key_window }
    }

    /// The failure records.
    pub fn failures(&self) -> &F {
        &self.failures
    }

    /// Sends one record's payment again, as the intake accepted it, unless the provider turns out
    /// to hold its charge (see the module). Sending first and noting the redrive after means a
    /// crash in between leaves the record as it was and a second redrive harmless (the processor
    /// deduplicates by key).
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
        check(&record, force)?;
        let accepted = self.accepted_message(&record).await?;
        let done = |new_message_id, found_charge| Redriven {
            partition: partition.to_owned(),
            message_id: message_id.to_owned(),
            new_message_id,
            found_charge,
        };
        if let Some(charge_id) = self.charged_already(&record, &accepted, now_ms).await? {
            let note = format!("resolved: charged ({charge_id}); the payment is completed with it, not re-sent");
            self.failures.close(partition, message_id, &note, now_ms).await?;
            return Ok(done(None, Some(charge_id)));
        }
        let spent = self.resolver.idempotency().get(&process_key(&accepted.scope, &accepted.idempotency_key)).await?;
        let grant = RedriveGrant { redriven_at_ms: now_ms, attempts_before: spent.map_or(0, |r| r.attempts) };
        let new_message_id = self.queue.redrive(&accepted, &grant).await?;
        let redrive = Redrive { at_ms: now_ms, message_id: new_message_id.clone() };
        self.failures.note_redrive(partition, message_id, &redrive).await?;
        Ok(done(Some(new_message_id), None))
    }

    /// The message the intake accepted for the record's payment: the exact copy the record kept
    /// (a valid payment message), else the one the intake's record keeps.
    async fn accepted_message(&self, record: &FailureRecord) -> Result<PaymentMessage, RedriveError> {
        let (Some(scope), Some(key)) = (&record.scope, &record.idempotency_key) else {
            return Err(RedriveError::NotAPayment(name(record)));
        };
        let input = match &record.accepted_message {
            Some(kept) => kept.clone(),
            None => {
                let intake = self.resolver.idempotency().get(&intake_key(scope, key)).await?;
                intake.and_then(|r| r.input).ok_or_else(|| RedriveError::NoAcceptedMessage(name(record)))?
            }
        };
        let message = PaymentMessage::parse(&input).map_err(|e| {
            RedriveError::Records(StoreError::Malformed {
                key: intake_key(scope, key).partition_key(),
                reason: format!("the accepted message does not parse: {e}"),
            })
        })?;
        if (&message.scope, &message.idempotency_key) != (scope, key) {
            return Err(RedriveError::NotAPayment(name(record)));
        }
        Ok(message)
    }

    /// The charge the provider holds for the payment, if any; an error when it cannot say and a
    /// re-send would no longer be covered by its key window, or when it refuses the API key.
    async fn charged_already(
        &self,
        record: &FailureRecord,
        payment: &PaymentMessage,
        now_ms: i64,
    ) -> Result<Option<String>, RedriveError> {
        match self.resolver.resolve(payment).await {
            Resolution::Charged(charge_id) => Ok(Some(charge_id)),
            Resolution::NotCharged => Ok(None),
            Resolution::KeyRefused(detail) => Err(RedriveError::ProviderRefusedKey { record: name(record), detail }),
            Resolution::Unknown(detail) => {
                let accepted = humantime::parse_rfc3339(&payment.created_at).map(epoch_ms).unwrap_or(0);
                let age = Duration::from_millis(u64::try_from(now_ms - accepted).unwrap_or(0));
                if age < self.key_window {
                    return Ok(None);
                }
                Err(RedriveError::OutcomeUnknown {
                    record: name(record),
                    detail,
                    window_hours: self.key_window.as_secs() / 3600,
                })
            }
        }
    }

    /// Redrives every open dead-letter record not redriven yet (poison records are left for an
    /// operator to judge).
    pub async fn redrive_open(&self, dry_run: bool, now_ms: i64) -> Result<Vec<Redriven>, RedriveError> {
        let open: Vec<FailureRecord> = self
            .failures
            .list(true)
            .await?
            .into_iter()
            .filter(|r| r.kind == FailureKind::DeadLetter && r.redriven.is_none())
            .collect();
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

    /// Closes a record without redriving it (the operator settled the payment another way).
    pub async fn close(&self, partition: &str, message_id: &str, note: &str, now_ms: i64) -> Result<(), RedriveError> {
        if self.failures.close(partition, message_id, note, now_ms).await? {
            return Ok(());
        }
        match self.failures.get(partition, message_id).await? {
            None => Err(RedriveError::NotFound { partition: partition.to_owned(), message_id: message_id.to_owned() }),
            Some(_) => Err(RedriveError::AlreadyClosed(format!("{partition} / {message_id}"))),
        }
    }
}

/// `partition / message id`, as errors name a record.
fn name(record: &FailureRecord) -> String {
    format!("{} / {}", record.partition, record.message_id)
}

/// Only an open record is redriven, and a poison one only when forced.
fn check(record: &FailureRecord, force: bool) -> Result<(), RedriveError> {
    if record.state != FailureState::Open {
        return Err(RedriveError::AlreadyClosed(name(record)));
    }
    if record.kind == FailureKind::Poison && !force {
        return Err(RedriveError::Poison(name(record)));
    }
    Ok(())
}

/// Moves whatever is still in the dead-letter queue back to the payments queue (messages the
/// DLQ consumer has not recorded yet, e.g. while it was disabled): SQS moves the messages
/// themselves, byte for byte.
pub struct DeadLetterMove {
    sqs: aws_sdk_sqs::Client,
    queue_arn: String,
    dlq_arn: String,
}

impl DeadLetterMove {
    /// From the dead-letter queue `dlq_arn` back to the payments queue `queue_arn`.
    pub fn new(sqs: aws_sdk_sqs::Client, queue_arn: impl Into<String>, dlq_arn: impl Into<String>) -> Self {
        Self { sqs, queue_arn: queue_arn.into(), dlq_arn: dlq_arn.into() }
    }

    /// The number of messages in the DLQ and, unless a dry run (or none waits), the move task's
    /// handle.
    pub async fn run(&self, dry_run: bool) -> Result<(u64, Option<String>), RedriveError> {
        let sqs_error = |e: String| RedriveError::Sqs(e);
        let dlq_url = self
            .sqs
            .get_queue_url()
            .queue_name(self.dlq_arn.rsplit(':').next().unwrap_or_default())
            .send()
            .await
            .map_err(|e| sqs_error(classify(&e).description))?
            .queue_url()
            .unwrap_or_default()
            .to_owned();
        let waiting_attribute = aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages;
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(dlq_url)
            .attribute_names(waiting_attribute.clone())
            .send()
            .await
            .map_err(|e| sqs_error(classify(&e).description))?;
        let waiting =
            attributes.attributes().and_then(|a| a.get(&waiting_attribute)).and_then(|n| n.parse().ok()).unwrap_or(0);
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
            .map_err(|e| sqs_error(classify(&e).description))?;
        Ok((waiting, task.task_handle().map(str::to_owned)))
    }
}
