//! Runs the messages of an SQS batch for any SQS-triggered function: concurrently (bounded),
//! in order per message group on FIFO queues, isolating panics, never starting a message the
//! deadline would cut short, and answering with a partial batch response
//! (ReportBatchItemFailures) so that only failed messages come back.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsMessage};
use futures::{FutureExt, StreamExt};

use super::visibility::VisibilityControl;
use lambda_observability::Metrics;
use lambda_support::clock::Clock;

/// What a message's handler decided, as far as its queue is concerned. Each SQS function has one
/// enum of fates (the processor's `PaymentFate`, the DLQ consumer's `DeadLetterFate`) that a
/// reader follows from the event to the batch response; this is the one question the runner asks
/// of it.
pub trait Fate {
    /// `None`: finished for good (succeeded, duplicate, or failed permanently and recorded), so
    /// the message is deleted. `Some(after)`: hide the message for `after`, then report it failed
    /// so that SQS delivers it again.
    fn retry_after(&self) -> Option<Duration>;
}

/// Handles one message. Implemented by each SQS function; the runner does the rest.
pub trait MessageHandler: Send + Sync {
    /// What one message can come to.
    type Fate: Fate + Send;

    /// Processes `message` within `invocation`; a panic is caught and fails this message only.
    fn handle_message(
        &self,
        message: &SqsMessage,
        invocation: &Invocation<'_>,
    ) -> impl Future<Output = Self::Fate> + Send;
}

/// What a message's handler may need of the invocation it runs in.
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a> {
    metrics: &'a Metrics,
    deadline_ms: i64,
}

impl<'a> Invocation<'a> {
    /// An invocation ending at `deadline_ms` (epoch ms), buffering its metrics in `metrics`.
    pub fn new(metrics: &'a Metrics, deadline_ms: i64) -> Self {
        Self { metrics, deadline_ms }
    }

    /// This invocation's metrics buffer, flushed once when the batch is done.
    pub fn metrics(&self) -> &'a Metrics {
        self.metrics
    }

    /// When Lambda ends the invocation (epoch ms): no work may be left half done past it.
    pub fn deadline_ms(&self) -> i64 {
        self.deadline_ms
    }
}

/// Why the runner reported a message failed without its handler deciding its fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotHandled {
    /// The handler panicked: visibility untouched.
    Panicked,
    /// Not started, too close to the deadline.
    NotStarted,
    /// FIFO: an earlier message of its group was not deleted, so it was not processed.
    SkippedAfterGroupFailure,
}

impl NotHandled {
    /// The metric counting messages that ended this way.
    pub fn metric(self) -> &'static str {
        match self {
            Self::Panicked => "MessagePanicked",
            Self::NotStarted => "MessageNotStarted",
            Self::SkippedAfterGroupFailure => "MessageSkipped",
        }
    }
}

/// The runner's tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Messages (or FIFO groups) processed at once.
    pub concurrency: usize,
    /// A message starts only if at least this much time is left before the deadline; set it to
    /// the longest a message may take (e.g. provider timeout + margin).
    pub start_margin: Duration,
}

impl Default for BatchConfig {
    /// Ten messages at once (a standard queue's default batch), each started with at least five
    /// seconds left.
    fn default() -> Self {
        Self { concurrency: 10, start_margin: Duration::from_secs(5) }
    }
}

/// What a batch came to: the response for Lambda, and what became of each message (by message id,
/// in batch order), for metrics, tests, tools and the benchmark.
#[derive(Debug, Clone)]
pub struct BatchReport<F> {
    /// Partial batch response: the ids of messages to be retried.
    pub response: SqsBatchResponse,
    /// The fate of each message its handler ran.
    pub handled: Vec<(String, F)>,
    /// The messages reported failed without a fate.
    pub not_handled: Vec<(String, NotHandled)>,
}

impl<F> Default for BatchReport<F> {
    fn default() -> Self {
        Self { response: SqsBatchResponse::default(), handled: Vec::new(), not_handled: Vec::new() }
    }
}

impl<F> BatchReport<F> {
    /// How many messages were not handled for `why`.
    pub fn count(&self, why: NotHandled) -> usize {
        self.not_handled.iter().filter(|(_, w)| *w == why).count()
    }
}

/// How one message ended, as the runner saw it.
type MessageResult<F> = Result<F, NotHandled>;

fn deletes<F: Fate>(result: &MessageResult<F>) -> bool {
    matches!(result, Ok(fate) if fate.retry_after().is_none())
}

/// Runs batches; holds what is built once per cold start.
#[derive(Debug, Clone)]
pub struct BatchRunner<V> {
    config: BatchConfig,
    visibility: V,
}

impl<V: VisibilityControl> BatchRunner<V> {
    /// A runner changing visibility through `visibility`.
    pub fn new(config: BatchConfig, visibility: V) -> Self {
        Self { config: BatchConfig { concurrency: config.concurrency.max(1), ..config }, visibility }
    }

    /// The visibility adapter (tests read what it recorded).
    pub fn visibility(&self) -> &V {
        &self.visibility
    }

    /// Runs `messages` with `handler` within `invocation`.
    pub async fn run<H: MessageHandler>(
        &self,
        messages: &[SqsMessage],
        invocation: &Invocation<'_>,
        clock: &dyn Clock,
        handler: &H,
    ) -> BatchReport<H::Fate> {
        let batch = Batch { messages, invocation, clock, handler };
        let mut results: Vec<(usize, MessageResult<H::Fate>)> = futures::stream::iter(group(messages))
            .map(|group| self.run_group(group, &batch))
            .buffer_unordered(self.config.concurrency)
            .flat_map(futures::stream::iter)
            .collect()
            .await;
        results.sort_by_key(|(index, _)| *index);

        let mut report = BatchReport::default();
        for (index, result) in results {
            let id = messages[index].message_id.clone().unwrap_or_default();
            if !deletes(&result) {
                // An empty identifier makes Lambda retry the whole batch: the safe answer for a
                // message that cannot be named.
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id.clone();
                report.response.batch_item_failures.push(failure);
            }
            match result {
                Ok(fate) => report.handled.push((id, fate)),
                Err(why) => report.not_handled.push((id, why)),
            }
        }
        report
    }

    async fn run_group<H: MessageHandler>(
        &self,
        group: Vec<usize>,
        batch: &Batch<'_, H>,
    ) -> Vec<(usize, MessageResult<H::Fate>)> {
        let mut results = Vec::with_capacity(group.len());
        let mut failed = false;
        for index in group {
            let result = if failed {
                Err(NotHandled::SkippedAfterGroupFailure)
            } else {
                self.run_message(&batch.messages[index], batch).await
            };
            failed |= !deletes(&result);
            results.push((index, result));
        }
        results
    }

    async fn run_message<H: MessageHandler>(
        &self,
        message: &SqsMessage,
        batch: &Batch<'_, H>,
    ) -> MessageResult<H::Fate> {
        let id = message.message_id.as_deref().unwrap_or("");
        let margin_ms = i64::try_from(self.config.start_margin.as_millis()).unwrap_or(i64::MAX);
        if batch.clock.now_ms().saturating_add(margin_ms) > batch.invocation.deadline_ms() {
            tracing::warn!(message_id = id, "not started: too close to the invocation deadline");
            return Err(NotHandled::NotStarted);
        }
        let fate = match AssertUnwindSafe(batch.handler.handle_message(message, batch.invocation)).catch_unwind().await
        {
            Ok(fate) => fate,
            Err(panic) => {
                let reason = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".to_owned());
                tracing::error!(message_id = id, panic = %reason, "message handler panicked; only this message fails");
                return Err(NotHandled::Panicked);
            }
        };
        if let (Some(after), Some(queue_arn), Some(receipt)) =
            (fate.retry_after(), &message.event_source_arn, &message.receipt_handle)
            && let Err(e) = self.visibility.hide(queue_arn, receipt, after).await
        {
            // The message still comes back, after the queue's own visibility timeout.
            tracing::warn!(message_id = id, error = %e, "could not change visibility");
        }
        Ok(fate)
    }
}

/// One batch being run: what every message's run needs.
struct Batch<'a, H> {
    messages: &'a [SqsMessage],
    invocation: &'a Invocation<'a>,
    clock: &'a dyn Clock,
    handler: &'a H,
}

/// How many times SQS has delivered `message` (its ApproximateReceiveCount), when it says.
pub fn receive_count(message: &SqsMessage) -> Option<u32> {
    message.attributes.get("ApproximateReceiveCount").and_then(|c| c.parse().ok())
}

/// Message indexes grouped for processing: one group per message on standard queues; on FIFO
/// queues one group per MessageGroupId, in arrival order.
fn group(messages: &[SqsMessage]) -> Vec<Vec<usize>> {
    let fifo = messages.iter().any(|r| r.event_source_arn.as_deref().is_some_and(|arn| arn.ends_with(".fifo")));
    if !fifo {
        return (0..messages.len()).map(|i| vec![i]).collect();
    }
    let mut order: Vec<&str> = Vec::new();
    let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, message) in messages.iter().enumerate() {
        let id = message.attributes.get("MessageGroupId").map(String::as_str).unwrap_or("");
        groups.entry(id).or_insert_with(|| {
            order.push(id);
            Vec::new()
        });
        groups.get_mut(id).expect("inserted above").push(i);
    }
    order.into_iter().map(|id| groups.remove(id).unwrap_or_default()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::visibility::RecordingVisibility;
    use lambda_support::clock::ManualClock;
    use std::sync::Mutex;

    fn message(id: &str, body: &str, group: Option<&str>) -> SqsMessage {
        let mut m = SqsMessage::default();
        m.message_id = Some(id.into());
        m.receipt_handle = Some(format!("rh-{id}"));
        m.body = Some(body.into());
        m.event_source_arn =
            Some(if group.is_some() { "arn:aws:sqs:us-east-1:1:q.fifo" } else { "arn:aws:sqs:us-east-1:1:q" }.into());
        if let Some(g) = group {
            m.attributes.insert("MessageGroupId".into(), g.into());
        }
        m
    }

    /// Acts on the body: "ok", "retry", "panic", "slow" (sleeps 50 ms); messages the order seen.
    #[derive(Default)]
    struct ScriptedHandler {
        seen: Mutex<Vec<String>>,
    }

    /// The tests' fate: deleted, or retried after a delay.
    #[derive(Debug, PartialEq)]
    struct Retry(Option<Duration>);

    impl Fate for Retry {
        fn retry_after(&self) -> Option<Duration> {
            self.0
        }
    }

    impl MessageHandler for ScriptedHandler {
        type Fate = Retry;

        async fn handle_message(&self, message: &SqsMessage, _: &Invocation<'_>) -> Retry {
            let body = message.body.clone().unwrap_or_default();
            self.seen.lock().unwrap().push(message.message_id.clone().unwrap_or_default());
            match body.as_str() {
                "retry" => Retry(Some(Duration::from_secs(7))),
                "panic" => panic!("boom"),
                "slow" => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Retry(None)
                }
                _ => Retry(None),
            }
        }
    }

    /// Runs `messages` with `handler`, the invocation ending at `deadline_ms`.
    async fn run<H: MessageHandler>(
        runner: &BatchRunner<RecordingVisibility>,
        messages: &[SqsMessage],
        deadline_ms: i64,
        handler: &H,
    ) -> BatchReport<H::Fate> {
        let metrics = Metrics::default();
        runner.run(messages, &Invocation::new(&metrics, deadline_ms), &ManualClock::at(0), handler).await
    }

    fn runner(concurrency: usize) -> BatchRunner<RecordingVisibility> {
        BatchRunner::new(
            BatchConfig { concurrency, start_margin: Duration::from_secs(1) },
            RecordingVisibility::default(),
        )
    }

    fn failed_ids<F>(report: &BatchReport<F>) -> Vec<&str> {
        report.response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect()
    }

    #[tokio::test]
    async fn a_panic_fails_its_record_only_and_retries_are_hidden_first() {
        let messages = [message("a", "ok", None), message("b", "panic", None), message("c", "retry", None)];
        let runner = runner(4);
        let report = run(&runner, &messages, 60_000, &ScriptedHandler::default()).await;
        assert_eq!(failed_ids(&report), ["b", "c"]);
        assert_eq!(report.count(NotHandled::Panicked), 1);
        assert_eq!(
            report.handled,
            [("a".to_owned(), Retry(None)), ("c".to_owned(), Retry(Some(Duration::from_secs(7))))]
        );
        assert_eq!(
            runner.visibility.calls(),
            [("arn:aws:sqs:us-east-1:1:q".to_owned(), "rh-c".to_owned(), Duration::from_secs(7))]
        );
    }

    #[tokio::test]
    async fn records_are_not_started_near_the_deadline() {
        let messages = [message("a", "ok", None)];
        let handler = ScriptedHandler::default();
        let report = run(&runner(1), &messages, 500, &handler).await;
        assert_eq!(report.not_handled, [("a".to_owned(), NotHandled::NotStarted)]);
        assert!(handler.seen.lock().unwrap().is_empty(), "the handler must not run");
    }

    /// Counts how many handlers run at once.
    #[derive(Default)]
    struct ConcurrencyProbe {
        running: std::sync::atomic::AtomicUsize,
        peak: std::sync::atomic::AtomicUsize,
    }

    impl MessageHandler for ConcurrencyProbe {
        type Fate = Retry;

        async fn handle_message(&self, _: &SqsMessage, _: &Invocation<'_>) -> Retry {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.running.fetch_add(1, SeqCst) + 1;
            self.peak.fetch_max(now, SeqCst);
            // Yield a few times so that every message the runner admits gets to start.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            self.running.fetch_sub(1, SeqCst);
            Retry(None)
        }
    }

    #[tokio::test]
    async fn records_run_concurrently_up_to_the_bound() {
        let messages: Vec<_> = (0..12).map(|i| message(&i.to_string(), "ok", None)).collect();
        let probe = ConcurrencyProbe::default();
        let report = run(&runner(5), &messages, i64::MAX, &probe).await;
        assert!(report.response.batch_item_failures.is_empty());
        assert_eq!(probe.peak.load(std::sync::atomic::Ordering::SeqCst), 5);
        let one_at_a_time = ConcurrencyProbe::default();
        run(&runner(1), &messages, i64::MAX, &one_at_a_time).await;
        assert_eq!(one_at_a_time.peak.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn fifo_groups_keep_order_and_stop_at_their_first_failure() {
        let messages = [
            message("g1-1", "ok", Some("g1")),
            message("g2-1", "retry", Some("g2")),
            message("g1-2", "ok", Some("g1")),
            message("g2-2", "ok", Some("g2")),
            message("g1-3", "ok", Some("g1")),
        ];
        let handler = ScriptedHandler::default();
        let report = run(&runner(4), &messages, i64::MAX, &handler).await;
        assert_eq!(failed_ids(&report), ["g2-1", "g2-2"]);
        assert_eq!(report.not_handled, [("g2-2".to_owned(), NotHandled::SkippedAfterGroupFailure)]);
        let seen = handler.seen.lock().unwrap().clone();
        let g1: Vec<_> = seen.iter().filter(|id| id.starts_with("g1")).collect();
        assert_eq!(g1, ["g1-1", "g1-2", "g1-3"]);
        assert!(!seen.contains(&"g2-2".to_owned()), "skipped messages are not processed");
    }
}
