//! Runs the records of an SQS batch for any SQS-triggered function: concurrently (bounded),
//! in order per message group on FIFO queues, isolating panics, never starting a record the
//! deadline would cut short, and answering with a partial batch response
//! (ReportBatchItemFailures) so that only failed records come back.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsMessage};
use futures::{FutureExt, StreamExt};

use super::visibility::VisibilityControl;
use crate::clock::Clock;

/// What became of one record, as its handler decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Finished for good (succeeded, duplicate, or failed permanently and recorded): delete it.
    Done,
    /// Try again later: hide the message for `after`, then report it failed.
    RetryAfter {
        /// How long the message stays invisible.
        after: Duration,
    },
}

/// Handles one record. Implemented by each SQS function; the runner does the rest.
pub trait RecordHandler: Send + Sync {
    /// Processes `message`; panics are caught and fail this record only.
    fn handle(&self, message: &SqsMessage) -> impl Future<Output = RecordOutcome> + Send;
}

/// How a record ended, as the runner saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordResult {
    /// Handler finished it: deleted.
    Done,
    /// Handler asked for a retry: hidden, then reported failed.
    Retried,
    /// Handler panicked: reported failed, visibility untouched.
    Panicked,
    /// Not started, too close to the deadline: reported failed.
    NotStarted,
    /// FIFO: an earlier record of its group failed, so it was not processed: reported failed.
    SkippedAfterGroupFailure,
}

impl RecordResult {
    fn deletes(&self) -> bool {
        matches!(self, Self::Done)
    }
}

/// The runner's tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Records (or FIFO groups) processed at once.
    pub concurrency: usize,
    /// A record starts only if at least this much time is left before the deadline; set it to
    /// the longest a record may take (e.g. provider timeout + margin).
    pub start_margin: Duration,
}

/// What a batch came to: the response for Lambda and each record's result, for metrics.
#[derive(Debug, Clone, Default)]
pub struct BatchReport {
    /// Partial batch response: the ids of records to be retried.
    pub response: SqsBatchResponse,
    /// Each record's message id and result, in batch order.
    pub results: Vec<(String, RecordResult)>,
}

impl BatchReport {
    /// How many records ended with `result`.
    pub fn count(&self, result: &RecordResult) -> usize {
        self.results.iter().filter(|(_, r)| r == result).count()
    }
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

    /// Runs `records` with `handler`, given the invocation's deadline (epoch ms).
    pub async fn run<H: RecordHandler>(
        &self,
        records: &[SqsMessage],
        deadline_ms: i64,
        clock: &dyn Clock,
        handler: &H,
    ) -> BatchReport {
        let groups = group(records);
        let mut results: Vec<(usize, RecordResult)> = futures::stream::iter(groups)
            .map(|group| self.run_group(group, records, deadline_ms, clock, handler))
            .buffer_unordered(self.config.concurrency)
            .flat_map(futures::stream::iter)
            .collect()
            .await;
        results.sort_by_key(|(index, _)| *index);

        let mut report = BatchReport::default();
        for (index, result) in results {
            let id = records[index].message_id.clone().unwrap_or_default();
            if !result.deletes() {
                // An empty identifier makes Lambda retry the whole batch: the safe answer for a
                // record that cannot be named.
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id.clone();
                report.response.batch_item_failures.push(failure);
            }
            report.results.push((id, result));
        }
        report
    }

    async fn run_group<H: RecordHandler>(
        &self,
        group: Vec<usize>,
        records: &[SqsMessage],
        deadline_ms: i64,
        clock: &dyn Clock,
        handler: &H,
    ) -> Vec<(usize, RecordResult)> {
        let mut results = Vec::with_capacity(group.len());
        let mut failed = false;
        for index in group {
            let result = if failed {
                RecordResult::SkippedAfterGroupFailure
            } else {
                self.run_record(&records[index], deadline_ms, clock, handler).await
            };
            failed |= !result.deletes();
            results.push((index, result));
        }
        results
    }

    async fn run_record<H: RecordHandler>(
        &self,
        message: &SqsMessage,
        deadline_ms: i64,
        clock: &dyn Clock,
        handler: &H,
    ) -> RecordResult {
        let id = message.message_id.as_deref().unwrap_or("");
        let margin_ms = i64::try_from(self.config.start_margin.as_millis()).unwrap_or(i64::MAX);
        if clock.now_ms().saturating_add(margin_ms) > deadline_ms {
            tracing::warn!(message_id = id, "not started: too close to the invocation deadline");
            return RecordResult::NotStarted;
        }
        match AssertUnwindSafe(handler.handle(message)).catch_unwind().await {
            Ok(RecordOutcome::Done) => RecordResult::Done,
            Ok(RecordOutcome::RetryAfter { after }) => {
                if let (Some(queue_arn), Some(receipt)) = (&message.event_source_arn, &message.receipt_handle)
                    && let Err(e) = self.visibility.hide(queue_arn, receipt, after).await
                {
                    // The message still comes back, after the queue's own visibility timeout.
                    tracing::warn!(message_id = id, error = %e, "could not change visibility");
                }
                RecordResult::Retried
            }
            Err(panic) => {
                let reason = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".to_owned());
                tracing::error!(message_id = id, panic = %reason, "record handler panicked; only this record fails");
                RecordResult::Panicked
            }
        }
    }
}

/// How many times SQS has delivered `record` (its ApproximateReceiveCount), when it says.
pub fn receive_count(record: &SqsMessage) -> Option<u32> {
    record.attributes.get("ApproximateReceiveCount").and_then(|c| c.parse().ok())
}

/// Record indexes grouped for processing: one group per record on standard queues; on FIFO
/// queues one group per MessageGroupId, in arrival order.
fn group(records: &[SqsMessage]) -> Vec<Vec<usize>> {
    let fifo = records.iter().any(|r| r.event_source_arn.as_deref().is_some_and(|arn| arn.ends_with(".fifo")));
    if !fifo {
        return (0..records.len()).map(|i| vec![i]).collect();
    }
    let mut order: Vec<&str> = Vec::new();
    let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, record) in records.iter().enumerate() {
        let id = record.attributes.get("MessageGroupId").map(String::as_str).unwrap_or("");
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
    use crate::clock::ManualClock;
    use crate::sqs::visibility::RecordingVisibility;
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

    /// Acts on the body: "ok", "retry", "panic", "slow" (sleeps 50 ms); records the order seen.
    #[derive(Default)]
    struct ScriptedHandler {
        seen: Mutex<Vec<String>>,
    }

    impl RecordHandler for ScriptedHandler {
        async fn handle(&self, message: &SqsMessage) -> RecordOutcome {
            let body = message.body.clone().unwrap_or_default();
            self.seen.lock().unwrap().push(message.message_id.clone().unwrap_or_default());
            match body.as_str() {
                "retry" => RecordOutcome::RetryAfter { after: Duration::from_secs(7) },
                "panic" => panic!("boom"),
                "slow" => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    RecordOutcome::Done
                }
                _ => RecordOutcome::Done,
            }
        }
    }

    fn runner(concurrency: usize) -> BatchRunner<RecordingVisibility> {
        BatchRunner::new(
            BatchConfig { concurrency, start_margin: Duration::from_secs(1) },
            RecordingVisibility::default(),
        )
    }

    fn failed_ids(report: &BatchReport) -> Vec<&str> {
        report.response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect()
    }

    #[tokio::test]
    async fn a_panic_fails_its_record_only_and_retries_are_hidden_first() {
        let records = [message("a", "ok", None), message("b", "panic", None), message("c", "retry", None)];
        let runner = runner(4);
        let clock = ManualClock::at(0);
        let report = runner.run(&records, 60_000, &clock, &ScriptedHandler::default()).await;
        assert_eq!(failed_ids(&report), ["b", "c"]);
        assert_eq!(report.count(&RecordResult::Panicked), 1);
        assert_eq!(
            runner.visibility.calls(),
            [("arn:aws:sqs:us-east-1:1:q".to_owned(), "rh-c".to_owned(), Duration::from_secs(7))]
        );
    }

    #[tokio::test]
    async fn records_are_not_started_near_the_deadline() {
        let records = [message("a", "ok", None)];
        let handler = ScriptedHandler::default();
        let report = runner(1).run(&records, 500, &ManualClock::at(0), &handler).await;
        assert_eq!(report.results, [("a".to_owned(), RecordResult::NotStarted)]);
        assert!(handler.seen.lock().unwrap().is_empty(), "the handler must not run");
    }

    /// Counts how many handlers run at once.
    #[derive(Default)]
    struct ConcurrencyProbe {
        running: std::sync::atomic::AtomicUsize,
        peak: std::sync::atomic::AtomicUsize,
    }

    impl RecordHandler for ConcurrencyProbe {
        async fn handle(&self, _: &SqsMessage) -> RecordOutcome {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.running.fetch_add(1, SeqCst) + 1;
            self.peak.fetch_max(now, SeqCst);
            // Yield a few times so that every record the runner admits gets to start.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            self.running.fetch_sub(1, SeqCst);
            RecordOutcome::Done
        }
    }

    #[tokio::test]
    async fn records_run_concurrently_up_to_the_bound() {
        let records: Vec<_> = (0..12).map(|i| message(&i.to_string(), "ok", None)).collect();
        let probe = ConcurrencyProbe::default();
        let report = runner(5).run(&records, i64::MAX, &ManualClock::at(0), &probe).await;
        assert!(report.response.batch_item_failures.is_empty());
        assert_eq!(probe.peak.load(std::sync::atomic::Ordering::SeqCst), 5);
        let one_at_a_time = ConcurrencyProbe::default();
        runner(1).run(&records, i64::MAX, &ManualClock::at(0), &one_at_a_time).await;
        assert_eq!(one_at_a_time.peak.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn fifo_groups_keep_order_and_stop_at_their_first_failure() {
        let records = [
            message("g1-1", "ok", Some("g1")),
            message("g2-1", "retry", Some("g2")),
            message("g1-2", "ok", Some("g1")),
            message("g2-2", "ok", Some("g2")),
            message("g1-3", "ok", Some("g1")),
        ];
        let handler = ScriptedHandler::default();
        let report = runner(4).run(&records, i64::MAX, &ManualClock::at(0), &handler).await;
        assert_eq!(failed_ids(&report), ["g2-1", "g2-2"]);
        assert_eq!(report.results[3].1, RecordResult::SkippedAfterGroupFailure);
        let seen = handler.seen.lock().unwrap().clone();
        let g1: Vec<_> = seen.iter().filter(|id| id.starts_with("g1")).collect();
        assert_eq!(g1, ["g1-1", "g1-2", "g1-3"]);
        assert!(!seen.contains(&"g2-2".to_owned()), "skipped records are not processed");
    }
}
