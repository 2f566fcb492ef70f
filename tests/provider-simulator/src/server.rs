//! The HTTP server (hyper, HTTP/1.1) and the charge logic.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::capacity::Capacity;
use crate::faults::{Fault, FaultRates, scripted};
use crate::state::{KeyEntry, LedgerEntry, State, StoredResponse};

/// How the simulator behaves.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// Seed of the rate-based fault draws.
    pub seed: u64,
    /// Probability of each fault per request.
    pub rates: FaultRates,
    /// Extra latency of a `latency` fault.
    pub latency_ms: u64,
    /// How long a commit-then-timeout answer is held back (must exceed the client's timeout).
    pub commit_delay_ms: u64,
    /// Rate and concurrency limits (none by default).
    pub capacity: Capacity,
    /// The API key charges and lookups must carry as `Authorization: Bearer …` (`None`: any or
    /// none is accepted). A wrong or missing key gets 401, as Stripe answers.
    pub api_key: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            rates: FaultRates::default(),
            latency_ms: 200,
            commit_delay_ms: 15_000,
            capacity: Capacity::default(),
            api_key: None,
        }
    }
}

struct Shared {
    config: Mutex<SimConfig>,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config(&self) -> SimConfig {
        self.config.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A running simulator; stops when dropped.
pub struct Simulator {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Simulator {
    /// Serves on `listener` until dropped.
    pub fn serve(listener: TcpListener, config: SimConfig) -> std::io::Result<Self> {
        config.rates.validate().map_err(std::io::Error::other)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { config: Mutex::new(config), state: Mutex::new(State::default()) });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(shared.clone(), request));
                    // A connection-reset fault ends the connection with an error: expected.
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// Binds 127.0.0.1 on a free port and serves there.
    pub async fn start(config: SimConfig) -> std::io::Result<Self> {
        Self::serve(TcpListener::bind("127.0.0.1:0").await?, config)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The error that makes hyper drop a connection without answering (connection reset).
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected connection reset")
    }
}

impl std::error::Error for DropConnection {}

type Answer = Result<Response<Full<Bytes>>, DropConnection>;

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({"error": {"type": kind, "code": code, "message": message}}))
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Answer {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(DropConnection),
    };
    // Read once: a runtime change applies from the next request on.
    let config = shared.config();
    let api = matches!(parts.method, Method::POST | Method::GET) && parts.uri.path() == "/v1/charges";
    if api && !authorized(&config, &parts.headers) {
        shared.state().ledger.unauthorized += 1;
        return Ok(error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "Invalid API Key provided",
        ));
    }
    let _served = match api.then(|| Served::admit(&shared, config.capacity)) {
        Some(Err(too_many)) => return Ok(*too_many),
        admitted => admitted,
    };
    Ok(match (parts.method.clone(), parts.uri.path()) {
        (Method::POST, "/v1/charges") => return charge(&shared, &config, &parts.headers, &body).await,
        (Method::GET, "/v1/charges") => return lookup(&shared, &config, parts.uri.query().unwrap_or("")).await,
        (Method::GET, "/ledger") => {
            let state = shared.state();
            let summary = parts.uri.query() == Some("summary");
            let snapshot = if summary { state.summary() } else { state.snapshot() };
            json(StatusCode::OK, &serde_json::to_value(snapshot).unwrap_or_default())
        }
        (Method::GET, "/health") => json(StatusCode::OK, &serde_json::json!({"ok": true})),
        (Method::GET, "/_sim/config") => {
            json(StatusCode::OK, &serde_json::to_value(shared.config()).unwrap_or_default())
        }
        (Method::PUT, "/_sim/config") => match serde_json::from_slice::<SimConfig>(&body) {
            Ok(config) if config.rates.validate().is_ok() => {
                *shared.config.lock().unwrap_or_else(|p| p.into_inner()) = config.clone();
                json(StatusCode::OK, &serde_json::to_value(config).unwrap_or_default())
            }
            _ => error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_config",
                "not a valid simulator config",
            ),
        },
        (Method::POST, "/_sim/reset") => {
            *shared.state() = State::default();
            json(StatusCode::OK, &serde_json::json!({"reset": true}))
        }
        _ => error(StatusCode::NOT_FOUND, "invalid_request_error", "not_found", "no such endpoint"),
    })
}

/// Whether the request carries the configured key (always, when none is configured).
fn authorized(config: &SimConfig, headers: &http::HeaderMap) -> bool {
    let Some(expected) = &config.api_key else { return true };
    let sent = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    sent == Some(expected.as_str())
}

/// An API request admitted by the capacity gate; leaves it when dropped.
struct Served<'a>(&'a Shared);

impl<'a> Served<'a> {
    /// Admits the request, or answers 429 with `Retry-After` (nothing charged, no fault drawn).
    fn admit(shared: &'a Shared, capacity: Capacity) -> Result<Self, Box<Response<Full<Bytes>>>> {
        match shared.state().gate.arrive(std::time::Instant::now(), capacity) {
            Ok(()) => Ok(Self(shared)),
            Err(throttled) => {
                let mut response =
                    error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "rate_limited", "over capacity");
                let seconds = http::HeaderValue::from(throttled.retry_after_s);
                response.headers_mut().insert("retry-after", seconds);
                Err(Box::new(response))
            }
        }
    }
}

impl Drop for Served<'_> {
    fn drop(&mut self) {
        self.0.state().gate.leave();
    }
}

#[derive(serde::Deserialize)]
struct ChargeBody {
    amount: u64,
    currency: String,
    payment_method: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    metadata: serde_json::Value,
}

async fn charge(shared: &Shared, config: &SimConfig, headers: &http::HeaderMap, body: &Bytes) -> Answer {
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned) else {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "idempotency_key_missing",
            "Idempotency-Key required",
        ));
    };
    let Ok(charge) = serde_json::from_slice::<ChargeBody>(body) else {
        return Ok(error(StatusCode::BAD_REQUEST, "invalid_request_error", "parameter_invalid", "invalid charge body"));
    };
    let body_hash = Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect::<String>();

    let fault = {
        let mut state = shared.state();
        let attempt = state.count_request(&key);
        let fault = scripted(&charge.metadata, attempt).or_else(|| config.rates.draw(config.seed, &key, attempt));
        if let Some(fault) = fault {
            state.count_fault(fault);
        }
        fault
    };
    if let Some(answer) = refusal(fault, config).await {
        return answer;
    }

    {
        let mut state = shared.state();
        match state.keys.get(&key).cloned() {
            Some(KeyEntry::InFlight) => {
                return Ok(error(
                    StatusCode::CONFLICT,
                    "idempotency_error",
                    "request_in_flight",
                    "a request with this key is in flight",
                ));
            }
            Some(KeyEntry::Done { body_hash: stored, response }) => {
                if stored != body_hash {
                    state.ledger.key_reuses += 1;
                    return Ok(error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "idempotency_error",
                        "idempotency_key_reused",
                        "keys can only be reused with the same parameters",
                    ));
                }
                state.ledger.replays += 1;
                let mut replay = stored_response(&response);
                replay.headers_mut().insert("idempotent-replayed", http::HeaderValue::from_static("true"));
                return Ok(replay);
            }
            None => {}
        }
        state.keys.insert(key.clone(), KeyEntry::InFlight);
    };
    if fault == Some(Fault::Latency) {
        // Slow processing: a concurrent request with this key meets 409 meanwhile.
        tokio::time::sleep(Duration::from_millis(config.latency_ms)).await;
    }
    let response = {
        let mut state = shared.state();
        let response = execute(&mut state, &key, &charge);
        state.keys.insert(key.clone(), KeyEntry::Done { body_hash, response: response.clone() });
        response
    };
    if fault == Some(Fault::CommitThenTimeout) {
        // Charged and recorded; the answer arrives after the client stopped waiting.
        tokio::time::sleep(Duration::from_millis(config.commit_delay_ms)).await;
    }
    Ok(stored_response(&response))
}

/// `GET /v1/charges?idempotency_key=K` or `?merchant_reference=R`: the charges made under that
/// key or reference, as a Stripe-style list; 409 while a request with the key is in flight.
/// Faults are drawn as for charges (per looked-up value and lookup attempt).
async fn lookup(shared: &Shared, config: &SimConfig, query: &str) -> Answer {
    let params: Vec<(String, String)> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let decode =
                |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
            (decode(k), decode(v))
        })
        .collect();
    let find = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (by_key, value) = match (find("idempotency_key"), find("merchant_reference")) {
        (Some(key), _) => (true, key),
        (None, Some(reference)) => (false, reference),
        (None, None) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "parameter_missing",
                "what to look up?",
            ));
        }
    };
    let fault = {
        let mut state = shared.state();
        let attempt = state.count_lookup(&value);
        let fault = config.rates.draw(config.seed, &format!("lookup:{value}"), attempt);
        if let Some(fault) = fault {
            state.count_fault(fault);
        }
        fault
    };
    match fault {
        Some(Fault::CommitThenTimeout) => return timed_out(config).await,
        Some(Fault::Latency) => tokio::time::sleep(Duration::from_millis(config.latency_ms)).await,
        other => {
            if let Some(answer) = refusal(other, config).await {
                return answer;
            }
        }
    }
    let state = shared.state();
    if by_key && matches!(state.keys.get(&value), Some(KeyEntry::InFlight)) {
        return Ok(error(
            StatusCode::CONFLICT,
            "idempotency_error",
            "request_in_flight",
            "a request with this key is in flight",
        ));
    }
    let data: Vec<serde_json::Value> = state
        .ledger
        .charges
        .iter()
        .filter(|c| if by_key { c.idempotency_key == value } else { c.description == value })
        .map(|c| {
            serde_json::json!({"id": c.id, "object": "charge", "amount": c.amount, "currency": c.currency,
                "status": "succeeded", "description": c.description})
        })
        .collect();
    Ok(json(StatusCode::OK, &serde_json::json!({"object": "list", "data": data})))
}

/// The answer of a fault that refuses the request without touching the ledger; `None` for the
/// faults that let it through (commit-then-timeout, latency) and for no fault.
async fn refusal(fault: Option<Fault>, config: &SimConfig) -> Option<Answer> {
    Some(match fault? {
        Fault::InternalError => {
            Ok(error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "internal_error", "injected 500"))
        }
        Fault::Unavailable => Ok(error(StatusCode::SERVICE_UNAVAILABLE, "api_error", "unavailable", "injected 503")),
        Fault::RateLimited => {
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "rate_limited", "injected 429");
            response.headers_mut().insert("retry-after", http::HeaderValue::from_static("1"));
            Ok(response)
        }
        Fault::Conflict => Ok(error(StatusCode::CONFLICT, "idempotency_error", "request_in_flight", "injected 409")),
        Fault::Timeout => timed_out(config).await,
        Fault::ConnectionReset => Err(DropConnection),
        Fault::CommitThenTimeout | Fault::Latency => return None,
    })
}

/// No answer until the client has given up (then a 504 nobody reads).
async fn timed_out(config: &SimConfig) -> Answer {
    tokio::time::sleep(Duration::from_millis(config.commit_delay_ms)).await;
    Ok(error(StatusCode::GATEWAY_TIMEOUT, "api_error", "timeout", "injected timeout"))
}

fn stored_response(response: &StoredResponse) -> Response<Full<Bytes>> {
    Response::builder()
        .status(response.status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(response.body.clone())))
        .expect("stored responses are valid")
}

/// Charges (or declines, for the test tokens that decline) and records the outcome.
fn execute(state: &mut State, key: &str, charge: &ChargeBody) -> StoredResponse {
    let decline = match charge.payment_method.as_str() {
        "pm_card_chargeDeclined" | "pm_card_declined" => Some("generic_decline"),
        "pm_card_chargeDeclinedInsufficientFunds" | "pm_card_insufficient_funds" => Some("insufficient_funds"),
        _ => None,
    };
    if let Some(decline_code) = decline {
        state.ledger.declines += 1;
        let body = serde_json::json!({"error": {
            "type": "card_error", "code": "card_declined", "decline_code": decline_code,
            "message": "Your card was declined."
        }});
        return StoredResponse { status: 402, body: body.to_string() };
    }
    state.next_charge += 1;
    let id = format!("ch_sim_{:08}", state.next_charge);
    state.ledger.charges.push(LedgerEntry {
        id: id.clone(),
        idempotency_key: key.to_owned(),
        amount: charge.amount,
        currency: charge.currency.clone(),
        description: charge.description.clone(),
        metadata: charge.metadata.clone(),
    });
    let body = serde_json::json!({
        "id": id, "object": "charge", "amount": charge.amount, "currency": charge.currency,
        "status": "succeeded", "description": charge.description
    });
    StoredResponse { status: 200, body: body.to_string() }
}
