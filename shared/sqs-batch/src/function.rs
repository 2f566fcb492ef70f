//! The skeleton every SQS-triggered function shares: the invocation's deadline, its metrics
//! (request id, messages not handled, one flush), the batch run, and the partial batch response.
//! A function supplies only its [`MessageHandler`]: what one message comes to.

use std::sync::Arc;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::LambdaEvent;

use super::batch::{BatchConfig, BatchReport, BatchRunner, Invocation, MessageHandler, NotHandled};
use super::visibility::VisibilityControl;
use lambda_observability::MetricsSink;
use lambda_runtime::service_fn;
use lambda_support::clock::{Clock, SystemClock, invocation_deadline_ms};

/// What an SQS function builds once per cold start besides its own logic.
pub struct SqsFunction<V> {
    runner: BatchRunner<V>,
    metrics: MetricsSink,
    clock: Arc<dyn Clock>,
}

impl<V: VisibilityControl> SqsFunction<V> {
    /// A function running batches by `config`, hiding retried messages through `visibility`,
    /// writing its metrics to `metrics`.
    pub fn new(config: BatchConfig, visibility: V, metrics: MetricsSink) -> Self {
        Self::with_clock(config, visibility, metrics, Arc::new(SystemClock))
    }

    /// The same, with deadlines measured on `clock` (tests move time by hand).
    pub fn with_clock(config: BatchConfig, visibility: V, metrics: MetricsSink, clock: Arc<dyn Clock>) -> Self {
        Self { runner: BatchRunner::new(config, visibility), metrics, clock }
    }

    /// Serves Lambda's SQS events with `handler` until the runtime stops: the whole `main` of a
    /// function, after building the two.
    pub async fn run<H: MessageHandler>(self, handler: H) -> Result<(), lambda_runtime::Error> {
        lambda_runtime::run(service_fn(|event| self.handle(event, &handler))).await
    }

    /// The Lambda handler's body: a partial batch response, never an error (failures are per
    /// message, so one bad message never sends the whole batch back).
    pub async fn handle<H: MessageHandler>(
        &self,
        event: LambdaEvent<SqsEvent>,
        handler: &H,
    ) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        let deadline_ms = invocation_deadline_ms(event.context.deadline, self.clock.now_ms());
        let report = self.process_batch(&event.payload.records, deadline_ms, &event.context.request_id, handler).await;
        Ok(report.response)
    }

    /// Runs `messages` with `handler` before `deadline_ms` (epoch ms), counting the messages not
    /// handled and flushing this invocation's metrics at the end.
    pub async fn process_batch<H: MessageHandler>(
        &self,
        messages: &[SqsMessage],
        deadline_ms: i64,
        request_id: &str,
        handler: &H,
    ) -> BatchReport<H::Fate> {
        let metrics = self.metrics.invocation();
        metrics.property("RequestId", request_id);
        let invocation = Invocation::new(&metrics, deadline_ms);
        let report = self.runner.run(messages, &invocation, self.clock.as_ref(), handler).await;
        for why in [NotHandled::Panicked, NotHandled::NotStarted, NotHandled::SkippedAfterGroupFailure] {
            let n = report.count(why);
            if n > 0 {
                metrics.count(why.metric(), n as u64);
            }
        }
        metrics.flush();
        report
    }

    /// The batch runner (its visibility adapter messages calls in tests).
    pub fn runner(&self) -> &BatchRunner<V> {
        &self.runner
    }

    /// The function's metrics sink (tests read what it flushed).
    pub fn metrics(&self) -> &MetricsSink {
        &self.metrics
    }

    /// The clock deadlines are measured on.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}
