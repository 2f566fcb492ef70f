//! The local intake's front door: an HTTP proxy between clients and the runtime emulator that
//! keeps at most [`MAX_IN_FLIGHT`] requests inside the emulator at once, and answers `503` with
//! `Retry-After` to a request that waits longer than [`ADMISSION_WAIT`] for its turn, or whose
//! invocation takes longer than [`UPSTREAM_TIMEOUT`] (an invocation lost with a crashed function
//! process is never answered by the emulator).
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

use std::convert::Infallible;
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

/// What the proxy does to each request besides forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// At most [`MAX_IN_FLIGHT`] requests upstream at once; `503` past [`ADMISSION_WAIT`].
    Admission,
    /// Each request waits this long before it is forwarded; no limit on how many at once.
    Latency(Duration),
}

/// The proxy; stops when dropped.
pub struct FrontDoor {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl FrontDoor {
    /// Listens on 127.0.0.1:`port` and forwards to the emulator at `upstream`
    /// (`http://127.0.0.1:PORT`).
    pub async fn start(port: u16, upstream: String) -> std::io::Result<Self> {
        Self::with_policy(port, upstream, Policy::Admission).await
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
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| forward(shared.clone(), request));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
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

async fn forward(
    shared: Arc<Shared>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let _permit = match shared.policy {
        Policy::Admission => match tokio::time::timeout(ADMISSION_WAIT, shared.admission.acquire()).await {
            Ok(Ok(permit)) => Some(permit),
            _ => return Ok(busy()),
        },
        Policy::Latency(latency) => {
            tokio::time::sleep(latency).await;
            None
        }
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else { return Ok(busy()) };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut upstream = shared
        .http
        .request(parts.method.clone(), format!("{}{path}", shared.upstream))
        .timeout(UPSTREAM_TIMEOUT)
        .body(body);
    for (name, value) in &parts.headers {
        if name != hyper::header::HOST {
            upstream = upstream.header(name, value);
        }
    }
    let Ok(answer) = upstream.send().await else { return Ok(busy()) };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != hyper::header::TRANSFER_ENCODING && name != hyper::header::CONTENT_LENGTH {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    Ok(response.body(Full::new(bytes)).unwrap_or_else(|_| busy()))
}

/// What API Gateway's throttle would say, as the intake's own problem document.
fn busy() -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "type": format!("{}service-unavailable", intake::problem::TYPE_BASE),
        "title": "Temporarily unavailable",
        "status": 503,
        "detail": "Too many requests at once for the local intake; retry in 1 s with the same Idempotency-Key.",
    });
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header("content-type", "application/problem+json")
        .header("retry-after", "1")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}
