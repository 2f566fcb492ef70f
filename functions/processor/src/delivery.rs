//! One delivery of a message, as the decisions need it: its body, how often SQS delivered it, the
//! invocation's deadline, and the fresh budget an operator's redrive gave it.

use std::time::Duration;

use aws_lambda_events::sqs::SqsMessage;
use lambda_sqs_batch::{Invocation, receive_count};
use lambda_support::clock::epoch_ms;
use payments_core::failures::FailedMessage;
use payments_core::payment::{ChargeRequest, KeyHint, PaymentMessage, RedriveGrant, provider_idempotency_key};

/// The SQS side of one message.
pub(crate) struct Delivery<'a> {
    pub(crate) sqs: &'a SqsMessage,
    pub(crate) body: &'a str,
    pub(crate) receive_count: u32,
    pub(crate) deadline_ms: i64,
    /// The fresh budget an operator's redrive gave the payment, when this delivery is one.
    pub(crate) grant: Option<RedriveGrant>,
}

impl<'a> Delivery<'a> {
    pub(crate) fn of(sqs: &'a SqsMessage, invocation: &Invocation<'_>) -> Self {
        let body = sqs.body.as_deref().unwrap_or("");
        let grant = RedriveGrant::from_attributes(|name| sqs.message_attributes.get(name)?.string_value.clone());
        Self { sqs, body, receive_count: receive_count(sqs).unwrap_or(1), deadline_ms: invocation.deadline_ms(), grant }
    }

    /// Of `attempts` provider attempts, those that count against the budget: since the redrive,
    /// when this delivery is one.
    pub(crate) fn spent(&self, attempts: u32) -> u32 {
        attempts.saturating_sub(self.grant.map_or(0, |g| g.attempts_before))
    }

    /// How old the payment is for its budget at `now_ms`: since its acceptance, or since the
    /// operator's redrive when this delivery is one.
    pub(crate) fn age(&self, message: &PaymentMessage, now_ms: i64) -> Duration {
        let Some(accepted) = accepted_ms(message) else { return Duration::ZERO };
        let since = self.grant.map_or(accepted, |g| accepted.max(g.redriven_at_ms));
        Duration::from_millis(u64::try_from(now_ms - since).unwrap_or(0))
    }

    /// The message as a failure record names it, for the payment `hint` when it names one.
    pub(crate) fn failed<'h>(&'h self, hint: Option<&'h KeyHint>) -> FailedMessage<'h> {
        FailedMessage {
            message_id: self.sqs.message_id.as_deref().unwrap_or_default(),
            hint,
            body: self.body,
            receive_count: self.receive_count,
            source_queue: self.sqs.event_source_arn.as_deref().unwrap_or_default(),
        }
    }
}

/// When the intake accepted the payment (epoch ms).
pub(crate) fn accepted_ms(message: &PaymentMessage) -> Option<i64> {
    humantime::parse_rfc3339(&message.created_at).ok().map(epoch_ms)
}

/// The payment a valid message names, as a failure record keys it.
pub(crate) fn hint_of(message: &PaymentMessage) -> KeyHint {
    KeyHint { scope: message.scope.clone(), idempotency_key: message.idempotency_key.clone() }
}

/// The charge for `message`, under the provider key derived from its scope and key.
pub(crate) fn charge_request(message: &PaymentMessage) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: provider_idempotency_key(&message.scope, &message.idempotency_key),
        amount: message.payment.amount,
        currency: message.payment.currency,
        payment_method: message.payment.payment_method.clone(),
        merchant_reference: message.payment.merchant_reference.clone(),
        metadata: message.payment.metadata.clone(),
    }
}
