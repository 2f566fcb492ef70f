//! `POST /payments` and `GET /payments/{key}`.

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use lambda_http::http::{Method, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use lambda_idempotency::{
    ClaimOutcome, Idempotency, IdempotencyKey, IdempotencyStore, Lease, PayloadHash, Recovery, Scope, Settlement,
    StoreError,
};
use lambda_observability::{Metrics, MetricsSink};
use lambda_support::clock::rfc3339_ms;
use payments_core::failures::FailureStore;
use payments_core::payment::card_data::{contains_card_number, redact_card_data};
use payments_core::payment::envelope::{SCHEMA_VERSION, parse_strict, safe_path};
use payments_core::payment::{
    PaymentMessage, PaymentQueue, PaymentRequest, PaymentView, acceptance, derive_view, intake_key, process_key,
    status_path,
};
use percent_encoding::percent_decode_str;
use serde_json::Value;

use crate::config::IntakeConfig;
use crate::identity;
use crate::problem::Problem;

/// How long a status read may wait for the stores before it answers `503`.
pub const STATUS_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything the intake builds once per cold start.
pub struct Intake<S, F, Q> {
    idempotency: Idempotency<S>,
    failures: F,
    queue: Q,
    config: IntakeConfig,
    metrics: MetricsSink,
}

impl<S: IdempotencyStore, F: FailureStore, Q: PaymentQueue> Intake<S, F, Q> {
    /// The intake over its adapters: idempotency records of operation `intake` (and reads of
    /// `process`) in `store`, failure records (read for DEAD_LETTERED) in `failures`, accepted
    /// payments to `queue`; metrics in the configured namespace.
    pub fn new(store: S, failures: F, queue: Q, config: IntakeConfig) -> Self {
        Self {
            idempotency: Idempotency::new(store, config.idempotency),
            failures,
            queue,
            metrics: MetricsSink::new(&config.metrics_namespace, "intake"),
            config,
        }
    }

    /// The idempotency guard (tests and tools read and write records through it).
    pub fn idempotency(&self) -> &Idempotency<S> {
        &self.idempotency
    }

    /// The Lambda handler. Never fails and never panics outward: every error is a problem
    /// response, unexpected ones a 500 whose correlation id is in the logs.
    pub async fn handle(&self, request: Request) -> Result<Response<Body>, lambda_http::Error> {
        let correlation_id = correlation_id(&request);
        // The path may carry a key, so it is shown (problem `instance`, logs) only made safe.
        let path = safe_path(request.uri().path());
        let metrics = self.metrics.invocation();
        metrics.property("CorrelationId", correlation_id.as_str());
        let outcome = AssertUnwindSafe(self.route(&request, &correlation_id, &metrics)).catch_unwind().await;
        let response = match outcome {
            Ok(Ok(response)) => response,
            Ok(Err(problem)) => {
                if problem.status().is_server_error() {
                    tracing::error!(correlation_id, problem = problem.slug(), "request failed");
                }
                metrics.count("Rejected", 1);
                metrics.count_with("Rejection", 1, &[("Reason", problem.slug())]);
                problem.response(&self.config.problem_type_base, &path, &correlation_id)
            }
            Err(_) => {
                tracing::error!(correlation_id, "handler panicked");
                metrics.count("Rejected", 1);
                metrics.count_with("Rejection", 1, &[("Reason", "panic")]);
                Problem::Internal.response(&self.config.problem_type_base, &path, &correlation_id)
            }
        };
        tracing::info!(
            correlation_id,
            method = %request.method(),
            path,
            status = response.status().as_u16(),
            idempotency_key = redact_card_data(
                request.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("")
            ),
            "request handled"
        );
        metrics.flush();
        Ok(response)
    }

    async fn route(
        &self,
        request: &Request,
        correlation_id: &str,
        metrics: &Metrics,
    ) -> Result<Response<Body>, Problem> {
        let path = request.uri().path();
        match (request.method(), path) {
            (&Method::POST, "/payments") => self.submit(request, correlation_id, metrics).await,
            (_, "/payments") => Err(Problem::MethodNotAllowed("POST")),
            (&Method::GET, p) if p.starts_with("/payments/") => self.status(request, &p["/payments/".len()..]).await,
            (_, p) if p.starts_with("/payments/") => Err(Problem::MethodNotAllowed("GET")),
            (&Method::GET, p) if p == "/problems" || p.starts_with("/problems/") => {
                problem_documentation(p.trim_start_matches("/problems").trim_start_matches('/'))
            }
            _ => Err(Problem::NotFound(format!("no route for {}", safe_path(path)))),
        }
    }

    /// `POST /payments`: claim → enqueue → complete with the response; a replay returns it.
    async fn submit(
        &self,
        request: &Request,
        correlation_id: &str,
        metrics: &Metrics,
    ) -> Result<Response<Body>, Problem> {
        let Submission { scope, key, payment, hash } = self.submission(request)?;
        let now = self.idempotency.now_ms();
        // The lease ends with the invocation, and at the latest after the configured intake lease.
        let deadline = request
            .lambda_context_ref()
            .map(|c| lambda_support::clock::invocation_deadline_ms(c.deadline, now))
            .unwrap_or(i64::MAX);
        let message = PaymentMessage {
            schema_version: SCHEMA_VERSION,
            idempotency_key: key,
            scope,
            payment,
            created_at: rfc3339_ms(now),
            correlation_id: correlation_id.to_owned(),
        };
        // The claim keeps the message: should this invocation die before it enqueues and
        // completes, the completer enqueues it once the recovery is due.
        let recovery = Recovery { due_ms: self.recovery_due_ms(now, deadline), input: Some(message.to_body()) };
        let record_key = intake_key(&message.scope, &message.idempotency_key);
        let claimed = self.idempotency.claim_recoverable(&record_key, &hash, deadline, Some(recovery)).await;
        let lease = match claimed {
            Ok(ClaimOutcome::Claimed(lease)) => lease,
            Ok(ClaimOutcome::AlreadyCompleted { result }) => {
                metrics.count("Replayed", 1);
                return self.replay(&message.scope, &message.idempotency_key, &result).await;
            }
            refused => return Err(refusal_problem(refused, now, correlation_id)),
        };
        let body = self.enqueue_and_record(&message, &lease, metrics).await?;
        Ok(accepted(&message.idempotency_key, &body, false))
    }

    /// The request's payment, read and validated before anything is claimed: who asks, under
    /// which key, for what, and the payload's fingerprint.
    fn submission(&self, request: &Request) -> Result<Submission, Problem> {
        let scope = self.caller_scope(request)?;
        let key = match request.headers().get("idempotency-key") {
            None => return Err(Problem::MissingIdempotencyKey),
            Some(value) => value
                .to_str()
                .map_err(|_| Problem::InvalidIdempotencyKey("must be printable ASCII".into()))
                .and_then(client_key)?,
        };
        if let Some(content_type) = request.headers().get("content-type")
            && !content_type.to_str().is_ok_and(is_json_media_type)
        {
            return Err(Problem::UnsupportedMediaType);
        }
        let body: &[u8] = request.body().as_ref();
        if body.len() > MAX_BODY_BYTES {
            return Err(Problem::BodyTooLarge { limit: MAX_BODY_BYTES });
        }
        let text = std::str::from_utf8(body)
            .map_err(|_| Problem::InvalidBody { field: ".".into(), detail: "body is not UTF-8".into() })?;
        let payment: PaymentRequest = parse_strict(text).map_err(|e| match e {
            payments_core::payment::EnvelopeError::Invalid { path, reason } => {
                Problem::InvalidBody { field: path, detail: reason }
            }
            other => Problem::InvalidBody { field: ".".into(), detail: other.to_string() },
        })?;
        if payment.amount.get() > self.config.max_amount_minor {
            return Err(Problem::InvalidBody {
                field: "amount".into(),
                detail: format!("must be at most {} minor units", self.config.max_amount_minor),
            });
        }
        let hash =
            PayloadHash::of(&payment).map_err(|e| Problem::InvalidBody { field: ".".into(), detail: e.to_string() })?;
        Ok(Submission { scope, key, payment, hash })
    }

    /// Enqueues the claimed payment and records the acceptance (the 202's body) as the claim's
    /// result. Not enqueued: the key is given back so the client's retry proceeds at once.
    /// `Accepted` is counted by the write that completes the acceptance, once per payment: one
    /// left unrecorded is finished (and counted) by a client's retry or by the completer.
    async fn enqueue_and_record(
        &self,
        message: &PaymentMessage,
        lease: &Lease,
        metrics: &Metrics,
    ) -> Result<Value, Problem> {
        let correlation_id = message.correlation_id.as_str();
        if let Err(e) = self.queue.enqueue(message).await {
            if let Err(release) = self.idempotency.release(lease, &e.detail).await {
                tracing::warn!(correlation_id, error = %release, "release failed; the lease frees the key when it ends");
            }
            tracing::error!(correlation_id, error = %e, "enqueue failed");
            return Err(Problem::ServiceUnavailable { retry_after_s: 1 });
        }
        let body = acceptance(message);
        match self.idempotency.complete(lease, &body).await {
            Ok(Settlement::Recorded) => metrics.count("Accepted", 1),
            // Enqueued but not recorded: the lease runs out and a client retry enqueues again,
            // which the processor deduplicates. Visible to operators as a stuck intake record.
            Ok(Settlement::NotOwner { .. }) => {
                tracing::warn!(correlation_id, "intake record taken over before completion")
            }
            Err(e) => tracing::warn!(correlation_id, error = %e, "enqueued, but the intake record was not completed"),
        }
        Ok(body)
    }

    /// When an acceptance claimed at `now` with this deadline counts as abandoned: the end of its
    /// lease plus the grace left for the client's own retry.
    fn recovery_due_ms(&self, now: i64, deadline: i64) -> i64 {
        let as_ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let lease_end = deadline.min(now.saturating_add(as_ms(self.config.idempotency.max_lease)));
        lease_end.saturating_add(as_ms(self.config.recovery_grace))
    }

    /// The stored 202 again, marked as a replay, with the payment's current status.
    async fn replay(&self, scope: &Scope, key: &IdempotencyKey, stored: &str) -> Result<Response<Body>, Problem> {
        let mut body: Value = serde_json::from_str(stored).map_err(|_| Problem::Internal)?;
        // The payment's current status when the stores answer in time; otherwise the replay
        // still answers, with the status the acceptance stored.
        if let Ok(Some(view)) = self.view(scope, key).await {
            body["status"] = serde_json::to_value(view.status).unwrap_or(Value::Null);
        }
        Ok(accepted(key, &body, true))
    }

    /// `GET /payments/{key}`: the caller's payment, or 404 (also for another caller's key).
    async fn status(&self, request: &Request, encoded_key: &str) -> Result<Response<Body>, Problem> {
        let scope = self.caller_scope(request)?;
        let decoded = percent_decode_str(encoded_key).decode_utf8().map_err(|_| {
            Problem::InvalidIdempotencyKey("the key in the path is not valid percent-encoded UTF-8".into())
        })?;
        let key = client_key(&decoded)?;
        let view =
            self.view(&scope, &key).await?.ok_or_else(|| Problem::NotFound("no payment with this key".into()))?;
        let body = serde_json::to_string(&view).map_err(|_| Problem::Internal)?;
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Body::Text(body))
            .expect("static response parts are valid"))
    }

    /// The payment's view, read within [`STATUS_READ_TIMEOUT`]: a store that answers slowly
    /// degrades a status read to a `503` with `Retry-After`, it never holds the caller (nor
    /// this instance) for the SDK's whole retry budget.
    async fn view(&self, scope: &Scope, key: &IdempotencyKey) -> Result<Option<PaymentView>, Problem> {
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "status read failed");
            Problem::ServiceUnavailable { retry_after_s: 1 }
        };
        let (intake_record, process_record) = (intake_key(scope, key), process_key(scope, key));
        let reads = async {
            tokio::join!(
                self.idempotency.get(&intake_record),
                self.idempotency.get(&process_record),
                self.failures.for_payment(scope, key),
            )
        };
        let (intake, process, failures) =
            tokio::time::timeout(STATUS_READ_TIMEOUT, reads).await.map_err(|_| unavailable(&"timed out"))?;
        let intake = intake.map_err(|e| unavailable(&e))?;
        let process = process.map_err(|e| unavailable(&e))?;
        let failures = failures.map_err(|e| unavailable(&e))?;
        Ok(derive_view(key, intake.as_ref(), process.as_ref(), &failures))
    }

    /// The caller's scope, as the authorizer (or, in local runs, the shortcut header) gives it.
    fn caller_scope(&self, request: &Request) -> Result<Scope, Problem> {
        let config = &self.config;
        match identity::caller_scope(request, &config.scope_claim, config.allow_scope_header) {
            Ok((scope, _)) => Ok(scope),
            Err(e) => {
                tracing::warn!(error = %e, "request refused: no usable caller identity");
                Err(Problem::Unauthenticated(e))
            }
        }
    }
}

/// A payment request as read and validated from the HTTP request.
struct Submission {
    scope: Scope,
    key: IdempotencyKey,
    payment: PaymentRequest,
    hash: PayloadHash,
}

/// The answer to a claim that was neither granted nor a replay.
fn refusal_problem(refused: Result<ClaimOutcome, StoreError>, now: i64, correlation_id: &str) -> Problem {
    match refused {
        Ok(ClaimOutcome::InProgressElsewhere { lease_until_ms }) => {
            let retry_after_s = u64::try_from((lease_until_ms - now).max(1000)).unwrap_or(1000).div_ceil(1000);
            Problem::RequestInProgress { retry_after_s }
        }
        Ok(ClaimOutcome::PayloadMismatch) => Problem::IdempotencyKeyReused,
        Ok(ClaimOutcome::AlreadyFailed(failure)) => {
            // The intake never stores failures; a FAILED intake record is corrupt data.
            tracing::error!(correlation_id, code = failure.code, "intake record is FAILED");
            Problem::Internal
        }
        Err(e) if e.is_retryable() => Problem::ServiceUnavailable { retry_after_s: 1 },
        Err(e) => {
            tracing::error!(correlation_id, error = %e, "idempotency store error");
            Problem::Internal
        }
        Ok(ClaimOutcome::Claimed(_) | ClaimOutcome::AlreadyCompleted { .. }) => {
            unreachable!("claims and replays are answered by the caller")
        }
    }
}

/// A client's idempotency key (from the header or the path), refused with a reason that never
/// quotes it: 1–255 printable ASCII, no card number, and not `.` or `..` (a URL path cannot carry
/// those as a segment: clients and gateways normalise them away, so the status URL could never
/// be served).
fn client_key(raw: &str) -> Result<IdempotencyKey, Problem> {
    let key = IdempotencyKey::new(raw).map_err(|e| Problem::InvalidIdempotencyKey(e.to_string()))?;
    if contains_card_number(raw) {
        return Err(Problem::InvalidIdempotencyKey(
            "looks like a card number: card data is never accepted, not even as a key".into(),
        ));
    }
    if raw == "." || raw == ".." {
        return Err(Problem::InvalidIdempotencyKey("must not be \".\" or \"..\" (not addressable in a URL)".into()));
    }
    Ok(key)
}

/// `application/json`, in any letter case, with optional parameters (`; charset=utf-8`) and
/// nothing else: `application/jsonx` or `application/json-seq` are other media types.
pub fn is_json_media_type(value: &str) -> bool {
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        && parts.all(|p| {
            p.trim().split_once('=').is_some_and(|(name, v)| {
                !name.trim().is_empty()
                    && name.trim().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !v.is_empty()
            })
        })
}

/// `GET /problems/{slug}`: the documentation every problem `type` points at by default
/// (Markdown, public: the deployed route needs no signature).
fn problem_documentation(slug: &str) -> Result<Response<Body>, Problem> {
    let text = crate::problem::documentation(slug)
        .ok_or_else(|| Problem::NotFound(format!("no problem type {}", safe_path(slug))))?;
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/markdown; charset=utf-8")
        .header("cache-control", "public, max-age=3600")
        .body(Body::Text(text.to_owned()))
        .expect("static response parts are valid"))
}

fn accepted(key: &IdempotencyKey, body: &Value, replayed: bool) -> Response<Body> {
    let mut builder = Response::builder()
        .status(StatusCode::ACCEPTED)
        .header("content-type", "application/json")
        .header("location", status_path(key));
    if replayed {
        builder = builder.header("idempotent-replayed", "true");
    }
    builder.body(Body::Text(body.to_string())).expect("static response parts are valid")
}

fn correlation_id(request: &Request) -> String {
    request
        .request_context_ref()
        .and_then(|context| match context {
            RequestContext::ApiGatewayV2(c) => c.request_id.clone(),
            #[allow(unreachable_patterns)]
            _ => None,
        })
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}
