//! The local intake's front door: API Gateway's part, played between clients and the runtime
//! emulator. Each HTTP request becomes the payload-2.0 event API Gateway would send, with the
//! caller's identity in its request context as the authorizer vouches for it ([`crate::apigw`]),
//! and goes to the intake through the emulator's Invoke API; the answer goes back as HTTP. At most
//! [`MAX_IN_FLIGHT`] requests are inside the emulator at once; a request that waits longer than
//! [`ADMISSION_WAIT`] for its turn, or whose invocation takes longer than [`UPSTREAM_TIMEOUT`] (an
//! invocation lost with a crashed function process is never answered by the emulator), gets a
//! `503` problem document with `Retry-After`.
//!
//! Why: `cargo lambda watch` 1.9.2 (the newest release) queues invocations per function in a
//! channel of 100 and, when it is full, waits for room while holding the write lock that the
//! function's poll for its next invocation needs for reading (`RequestCache::upsert` in
//! `crates/cargo-lambda-watch/src/state.rs`). More than ~100 simultaneous requests therefore
//! deadlock the function for good: measured here, 150 clients straight at the emulator got 5
//! answers, and every later request hung too. API Gateway in front of the real intake answers
//! 429 past its throttle and 503/504 past its integration timeout; this proxy plays that part
//! locally. The functions themselves poll the emulator directly, never through this door.
//!
//! The same proxy, with [`Policy::Latency`], stands between the benchmark and its backends
//! (DynamoDB Local, the provider simulator) to add an in-region round trip to every request
//! while serving them concurrently, as AWS does. Written here rather than taken from a crate: the
//! maintained reverse-proxy crates do not add latency or admission control, and this is 100
//! lines over hyper and reqwest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Requests inside the emulator at once: well below its queue of 100.
pub const MAX_IN_FLIGHT: usize = 64;

/// How long a request waits for its turn before it is told to come back.
pub const ADMISSION_WAIT: Duration = Duration::from_secs(5);

/// How long the intake may take (its Lambda timeout is 10 s): past it the client gets `503`,
/// never a hang.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(15);

/// What the proxy does to each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// API Gateway before the intake: the request becomes an event invoking the function at the
    /// upstream URL (its Invoke API); at most [`MAX_IN_FLIGHT`] at once, `503` past
    /// [`ADMISSION_WAIT`].
    ApiGateway,
    /// Each request waits this long before it is forwarded as it is; no limit on how many at once.
    Latency(Duration),
}

/// The proxy; stops when dropped.
pub struct FrontDoor {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl FrontDoor {
    /// Listens on 127.0.0.1:`port` as API Gateway before the function whose Invoke API is at
    /// `invoke_url`.
    pub async fn start(port: u16, invoke_url: String) -> std::io::Result<Self> {
        Self::with_policy(port, invoke_url, Policy::ApiGateway).await
    }

    /// Listens on 127.0.0.1:`port` (0: any free port) and forwards to `upstream` under `policy`.
    pub async fn with_policy(port: u16, upstream: String, policy: Policy) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            policy,
            admission: Semaphore::new(MAX_IN_FLIGHT),
            http: reqwest::Client::new(),
        });
        let task = serve(listener, move |request| forward(shared.clone(), request));
        Ok(Self { addr, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FrontDoor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    upstream: String,
    policy: Policy,
    admission: Semaphore,
    http: reqwest::Client,
}

/// A request a proxy answers by closing the connection without a response (as a network fault
/// or a crashed peer would).
#[derive(Debug, thiserror::Error)]
#[error("connection dropped")]
pub struct Dropped;

/// Serves HTTP/1.1 on `listener`, each request answered by `handle` (an `Err` closes the
/// connection unanswered), until the returned task is aborted.
pub fn serve<H, F>(listener: TcpListener, handle: H) -> JoinHandle<()>
where
    H: Fn(Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<Response<Full<Bytes>>, Dropped>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(handle)).await;
            });
        }
    })
}

/// Sends the request (`parts` and `body`) on to `upstream` as it is, but for its host; the answer,
/// or `None` when none came in time.
pub async fn relay(
    http: &reqwest::Client,
    upstream: &str,
    parts: &hyper::http::request::Parts,
    body: Bytes,
) -> Option<Response<Full<Bytes>>> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request =
        http.request(parts.method.clone(), format!("{upstream}{path}")).timeout(UPSTREAM_TIMEOUT).body(body);
    for (name, value) in &parts.headers {
        if name != hyper::header::HOST {
            request = request.header(name, value);
        }
    }
    let answer = request.send().await.ok()?;
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != hyper::header::TRANSFER_ENCODING && name != hyper::header::CONTENT_LENGTH {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.ok()?;
    response.body(Full::new(bytes)).ok()
}

async fn forward(
    shared: Arc<Shared>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let path = request.uri().path().to_owned();
    let _permit = match shared.policy {
        Policy::ApiGateway => match tokio::time::timeout(ADMISSION_WAIT, shared.admission.acquire()).await {
            Ok(Ok(permit)) => Some(permit),
            _ => return Ok(busy(&path)),
        },
        Policy::Latency(latency) => {
            tokio::time::sleep(latency).await;
            None
        }
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else { return Ok(busy(&path)) };
    if shared.policy == Policy::ApiGateway {
        return Ok(invoke(&shared, &parts, &body).await.unwrap_or_else(|| busy(&path)));
    }
    Ok(relay(&shared.http, &shared.upstream, &parts, body).await.unwrap_or_else(|| busy(&path)))
}

/// Invokes the function with the event API Gateway would send for this request; its answer as
/// HTTP, or `None` when there was none in time (or none readable).
async fn invoke(shared: &Shared, parts: &hyper::http::request::Parts, body: &[u8]) -> Option<Response<Full<Bytes>>> {
    let headers = parts
        .headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect();
    let request = crate::apigw::HttpRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers,
        body,
    };
    let now_ms = lambda_support::clock::epoch_ms(std::time::SystemTime::now());
    let event = crate::apigw::event(&request, &uuid::Uuid::new_v4().to_string(), now_ms);
    let answer = shared.http.post(&shared.upstream).timeout(UPSTREAM_TIMEOUT).json(&event).send().await.ok()?;
    let answer: serde_json::Value = answer.json().await.ok()?;
    let answer = crate::apigw::response(&answer)?;
    let mut response = Response::builder().status(answer.status);
    for (name, value) in answer.headers {
        response = response.header(name, value);
    }
    response.body(Full::new(Bytes::from(answer.body))).ok()
}

/// What API Gateway answers when the integration does not (throttled, timed out), as the intake's
/// own `503` problem document, complete with `instance` and `correlation_id`.
fn busy(path: &str) -> Response<Full<Bytes>> {
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let problem = intake::problem::Problem::ServiceUnavailable { retry_after_s: 1 };
    let instance = payments_core::payment::envelope::safe_path(path);
    let answer = problem.response(intake::problem::DEFAULT_TYPE_BASE, &instance, &correlation_id);
    let mut response = Response::builder().status(StatusCode::SERVICE_UNAVAILABLE);
    for (name, value) in answer.headers() {
        response = response.header(name, value);
    }
    let body = match answer.body() {
        lambda_http::Body::Text(text) => Bytes::from(text.clone()),
        _ => Bytes::new(),
    };
    response.body(Full::new(body)).expect("the intake's own problem response is valid")
}
