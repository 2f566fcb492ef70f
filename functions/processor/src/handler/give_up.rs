//! Giving a payment up, safely: nothing is given up while it may have been charged.

use lambda_sqs_batch::{DeadLetter, DeadLetterQueue};
use payments_core::budget::GiveUpReason;
use payments_core::payment::Lookup;

use super::{Attempt, Processor, Refund};
use crate::delivery::Delivery;
use crate::fate::PaymentFate;
use crate::ports::Adapters;

impl<A: Adapters> Processor<A> {
    /// The last attempt may have reached the provider and charged (a timeout after sending), so
    /// ask it. Charged: complete with that charge (no new one). Not charged: dead-letter, saying
    /// so. Unknown: keep retrying.
    pub(super) async fn resolve_before_giving_up(
        &self,
        attempt: &Attempt<'_>,
        why: GiveUpReason,
        last_error: &str,
        refund: Refund,
    ) -> PaymentFate {
        let (deadline, only_call) = (attempt.delivery.deadline_ms, refund == Refund::LookupOnly);
        let lookup =
            self.provider.lookup(&attempt.permit, &attempt.request, deadline, attempt.metrics, only_call).await;
        match lookup {
            Lookup::Charged(charge) => {
                tracing::warn!(charge_id = charge.id, "outcome resolved by lookup: charged; completing with it");
                self.complete(attempt, charge).await
            }
            Lookup::NotCharged => {
                self.release(&attempt.lease, last_error, refund).await;
                self.dead_letter(attempt.delivery, why.as_str(), last_error, "not_charged").await
            }
            Lookup::Unknown(detail) => {
                self.release(&attempt.lease, last_error, refund).await;
                tracing::warn!(detail, "outcome unknown: the provider may hold a charge; not giving up");
                self.retry("outcome_unknown", &detail, attempt.lease.attempt, None)
            }
            Lookup::KeyRefused(detail) => {
                self.release(&attempt.lease, last_error, refund).await;
                tracing::error!(detail, "the provider refused the API key on a lookup: not giving up");
                self.retry("lookup_key_refused", &detail, attempt.lease.attempt, None)
            }
        }
    }

    /// Sends the message to the dead-letter queue with its context, then it is deleted. If the
    /// send fails the message stays for a retry (the queue's own redrive is the last net).
    pub(super) async fn dead_letter(
        &self,
        delivery: &Delivery<'_>,
        reason: &str,
        last_error: &str,
        resolution: &str,
    ) -> PaymentFate {
        let letter = DeadLetter {
            body: delivery.body.to_owned(),
            source_message_id: delivery.sqs.message_id.clone().unwrap_or_default(),
            source_queue: delivery.sqs.event_source_arn.clone().unwrap_or_default(),
            reason: reason.to_owned(),
            resolution: resolution.to_owned(),
        };
        match self.dead_letters.send(&letter).await {
            Ok(()) => {
                tracing::warn!(reason, last_error, "payment given up: sent to the dead-letter queue");
                PaymentFate::DeadLettered { reason: reason.to_owned(), last_error: last_error.to_owned() }
            }
            Err(e) => self.retry("dead_letter_not_sent", &e.to_string(), delivery.receive_count, None),
        }
    }
}
