//! The HTTP adapter for a Stripe-style provider: `POST {base}/v1/charges` with an
//! `Idempotency-Key` header, JSON in and out, and a strict classification of what comes back.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;

use super::credentials::{ApiKey, ApiKeyError, Refreshed};

use super::gateway::{Charge, ChargeLookup, ChargeRequest, GatewayError, Lookup, PaymentGateway, RetryableKind};

/// Timeouts and where the provider lives.
#[derive(Debug, Clone)]
pub struct HttpGatewayConfig {
    /// Base URL, e.g. `https://api.provider.example`.
    pub base_url: String,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Time allowed for the whole call; the processor's lease must outlast it.
    pub total_timeout: Duration,
    /// Whether a plain `http://` base URL is allowed (`PROVIDER_ALLOW_HTTP`, local runs only):
    /// deployed, card tokens and the provider's key travel over TLS or not at all.
    pub allow_plain_http: bool,
}

/// The failure code of a payment the provider refused to process because it refused the API key
/// (after the key store was asked again): the processor counts it as `ProviderUnauthorized`,
/// which has an alarm.
pub const PROVIDER_UNAUTHORIZED: &str = "provider_unauthorized";

/// The largest provider answer read: a charge or a list of a few charges is a few KiB; anything
/// far larger is not an answer to trust, and must not be buffered whole.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Calls the provider over HTTP(S), with its API key as a bearer token when one is configured.
#[derive(Clone)]
pub struct HttpGateway {
    client: reqwest::Client,
    charges_url: String,
    api_key: Option<Arc<ApiKey>>,
}

/// One answer, read (at most [`MAX_ANSWER_BYTES`]).
struct Answer {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl HttpGateway {
    /// Builds the client (connection pool, timeouts) once, at cold start. HTTPS only unless
    /// plain HTTP is explicitly allowed; redirects are not followed (a payment API that redirects
    /// is misconfigured, and a redirected charge could land anywhere).
    pub fn new(config: &HttpGatewayConfig) -> Result<Self, BuildError> {
        if !config.base_url.starts_with("https://") && !config.allow_plain_http {
            return Err(BuildError(
                "PROVIDER_BASE_URL must be https:// (PROVIDER_ALLOW_HTTP=true is for a local provider only)".into(),
            ));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.total_timeout)
            .https_only(!config.allow_plain_http)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| BuildError(e.to_string()))?;
        let charges_url = format!("{}/v1/charges", config.base_url.trim_end_matches('/'));
        Ok(Self { client, charges_url, api_key: None })
    }

    /// The deployed gateway: `provider`'s client, with the key from `key`'s secret when one is
    /// configured.
    pub fn deployed(
        provider: &HttpGatewayConfig,
        key: &super::credentials::ProviderKeyConfig,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self, BuildError> {
        let gateway = Self::new(provider)?;
        Ok(match key.api_key(sdk) {
            Some(api_key) => gateway.with_api_key(api_key),
            None => gateway,
        })
    }

    /// Sends `api_key` as `Authorization: Bearer …` with every request.
    pub fn with_api_key(mut self, api_key: Arc<ApiKey>) -> Self {
        self.api_key = Some(api_key);
        self
    }

    /// Sends the request `build` makes, with the current key. A 401 means the provider did
    /// nothing; if the key store holds another key by then (a rotation), the same request is
    /// sent once more with it (the idempotency key makes that safe in any case).
    async fn call(&self, build: impl Fn() -> reqwest::RequestBuilder) -> Result<Answer, GatewayError> {
        let unavailable = |e: ApiKeyError| GatewayError::Retryable {
            kind: RetryableKind::CredentialsUnavailable,
            detail: e.to_string(),
        };
        let Some(api_key) = &self.api_key else { return send(build(), None).await };
        let key = api_key.current().await.map_err(unavailable)?;
        let answer = send(build(), Some(&key)).await?;
        if answer.status != StatusCode::UNAUTHORIZED {
            return Ok(answer);
        }
        match api_key.refresh_after_refusal(&key).await.map_err(unavailable)? {
            Refreshed::New(fresh) => send(build(), Some(&fresh)).await,
            Refreshed::StoreHoldsTheRefusedKey => Ok(answer),
        }
    }
}

async fn send(request: reqwest::RequestBuilder, key: Option<&str>) -> Result<Answer, GatewayError> {
    let request = match key {
        Some(key) => request.bearer_auth(key),
        None => request,
    };
    let response = request.send().await.map_err(transport_error)?;
    let status = response.status();
    let retry_after = retry_after(&response);
    Ok(Answer { status, retry_after, body: read_capped(response).await? })
}

impl std::fmt::Debug for HttpGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("HttpGateway").field("charges_url", &self.charges_url).finish_non_exhaustive()
    }
}

/// The HTTP client could not be built (TLS initialisation).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the provider's HTTP client: {0}")]
pub struct BuildError(String);

#[derive(serde::Serialize)]
struct ChargeBody<'a> {
    amount: u64,
    currency: String,
    payment_method: &'a str,
    description: &'a str,
    metadata: &'a std::collections::BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct ChargeResponse {
    id: String,
    amount: u64,
    currency: String,
}

impl From<ChargeResponse> for Charge {
    fn from(charge: ChargeResponse) -> Self {
        Charge { id: charge.id, amount: charge.amount, currency: charge.currency.to_ascii_uppercase() }
    }
}

/// A Stripe-style list answer (`{"object": "list", "data": [...]}`).
#[derive(serde::Deserialize)]
struct ChargeList {
    data: Vec<ChargeResponse>,
}

#[derive(serde::Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorDetail,
}

#[derive(serde::Deserialize, Default)]
struct ErrorDetail {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl PaymentGateway for HttpGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        let body = ChargeBody {
            amount: request.amount.get(),
            currency: request.currency.code().to_ascii_lowercase(),
            payment_method: request.payment_method.as_str(),
            description: request.merchant_reference.as_str(),
            metadata: request.metadata.entries(),
        };
        let answer = self
            .call(|| {
                self.client.post(&self.charges_url).header("Idempotency-Key", &request.idempotency_key).json(&body)
            })
            .await?;
        classify(answer.status, answer.retry_after, &answer.body)
    }

    async fn lookup(&self, request: &ChargeLookup) -> Lookup {
        lookup_by_key_then_reference(self, request).await
    }
}

impl HttpGateway {
    /// `GET {base}/v1/charges?{field}={value}`: the charges listed, or why there is no answer
    /// ([`Lookup::Unknown`] or [`Lookup::KeyRefused`]).
    async fn list(&self, field: &str, value: &str) -> Result<Vec<Charge>, Lookup> {
        let answer = self.call(|| self.client.get(&self.charges_url).query(&[(field, value)])).await;
        let answer = answer.map_err(|e| Lookup::Unknown(e.to_string()))?;
        if answer.status == StatusCode::UNAUTHORIZED {
            return Err(Lookup::KeyRefused(
                "the provider refused the API key: check the key in the provider key secret".into(),
            ));
        }
        if !answer.status.is_success() {
            // 409: a request with this key is still in flight; 5xx, 429: no answer to trust.
            return Err(Lookup::Unknown(format!("lookup answered {}", answer.status)));
        }
        let list: ChargeList = serde_json::from_slice(&answer.body)
            .map_err(|e| Lookup::Unknown(format!("unreadable lookup answer: {e}")))?;
        Ok(list.data.into_iter().map(Charge::from).collect())
    }
}

/// By key first. Where nothing carries the key, by merchant reference, accepting only a single
/// charge of the same amount and currency (several are ambiguous: unknown, for an operator).
async fn lookup_by_key_then_reference(gateway: &HttpGateway, request: &ChargeLookup) -> Lookup {
    match gateway.list("idempotency_key", &request.idempotency_key).await {
        Ok(found) if !found.is_empty() => return Lookup::Charged(found[0].clone()),
        Ok(_) => {}
        Err(no_answer) => return no_answer,
    }
    match gateway.list("merchant_reference", request.merchant_reference.as_str()).await {
        Ok(found) => {
            let same: Vec<Charge> = found
                .into_iter()
                .filter(|c| c.amount == request.amount.get() && c.currency == request.currency.code())
                .collect();
            match same.as_slice() {
                [] => Lookup::NotCharged,
                [one] => Lookup::Charged(one.clone()),
                _ => Lookup::Unknown(format!("{} charges match the merchant reference", same.len())),
            }
        }
        Err(no_answer) => no_answer,
    }
}

/// The answer's body, at most [`MAX_ANSWER_BYTES`]; a longer one is unreadable (retryable: the
/// provider may answer properly next time).
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, GatewayError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(GatewayError::Retryable {
                kind: RetryableKind::InvalidResponse,
                detail: format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn transport_error(err: reqwest::Error) -> GatewayError {
    let kind = if err.is_timeout() { RetryableKind::Timeout } else { RetryableKind::Connection };
    GatewayError::Retryable { kind, detail: err.to_string() }
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The classification: 2xx success; 402 declined; 409, 429 and 5xx retryable; other 4xx
/// permanent.
fn classify(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Result<Charge, GatewayError> {
    if status.is_success() {
        let charge: ChargeResponse = serde_json::from_slice(body).map_err(|e| GatewayError::Retryable {
            kind: RetryableKind::InvalidResponse,
            detail: format!("{status} with an unreadable body: {e}"),
        })?;
        return Ok(charge.into());
    }
    let detail = serde_json::from_slice::<ErrorBody>(body).unwrap_or_default().error;
    let message = detail.message.unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
    match status {
        StatusCode::CONFLICT => Err(GatewayError::Retryable { kind: RetryableKind::InFlight, detail: message }),
        StatusCode::TOO_MANY_REQUESTS => {
            Err(GatewayError::Retryable { kind: RetryableKind::RateLimited { retry_after }, detail: message })
        }
        StatusCode::UNAUTHORIZED => Err(GatewayError::Rejected {
            status: 401,
            code: PROVIDER_UNAUTHORIZED.into(),
            message: format!("the provider refused the API key ({message}): check the key in the provider key secret"),
        }),
        StatusCode::PAYMENT_REQUIRED => Err(GatewayError::Declined {
            code: detail.decline_code.or(detail.code).unwrap_or_else(|| "card_declined".into()),
            message,
        }),
        s if s.is_client_error() => Err(GatewayError::Rejected {
            status: s.as_u16(),
            code: detail.code.unwrap_or_else(|| format!("http_{}", s.as_u16())),
            message,
        }),
        s => Err(GatewayError::Retryable { kind: RetryableKind::ServerError { status: s.as_u16() }, detail: message }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(status: u16, body: &str) -> Result<Charge, GatewayError> {
        classify(StatusCode::from_u16(status).unwrap(), None, body.as_bytes())
    }

    #[test]
    fn success_parses_the_charge() {
        let charge = class(200, r#"{"id":"ch_1","amount":500,"currency":"eur","status":"succeeded"}"#).unwrap();
        assert_eq!(charge, Charge { id: "ch_1".into(), amount: 500, currency: "EUR".into() });
    }

    #[test]
    fn declines_and_client_errors_are_permanent() {
        let declined =
            class(402, r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds"}}"#);
        assert!(matches!(declined, Err(GatewayError::Declined { code, .. }) if code == "insufficient_funds"));
        assert!(matches!(class(422, "{}"), Err(GatewayError::Rejected { status: 422, .. })));
        assert!(matches!(class(400, "not json"), Err(GatewayError::Rejected { status: 400, .. })));
    }

    #[test]
    fn in_flight_rate_limits_and_server_errors_are_retryable() {
        assert!(matches!(class(409, "{}"), Err(GatewayError::Retryable { kind: RetryableKind::InFlight, .. })));
        assert!(matches!(
            class(429, "{}"),
            Err(GatewayError::Retryable { kind: RetryableKind::RateLimited { .. }, .. })
        ));
        for status in [500, 502, 503] {
            assert!(matches!(
                class(status, ""),
                Err(GatewayError::Retryable { kind: RetryableKind::ServerError { .. }, .. })
            ));
        }
        assert!(matches!(
            class(200, "<html>"),
            Err(GatewayError::Retryable { kind: RetryableKind::InvalidResponse, .. })
        ));
    }

    /// Serves `answer` (a raw HTTP/1.1 response) to every connection on a loopback port.
    async fn serve(answer: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(&answer).await;
            }
        });
        url
    }

    fn gateway(base_url: &str, allow_plain_http: bool) -> Result<HttpGateway, BuildError> {
        HttpGateway::new(&HttpGatewayConfig {
            base_url: base_url.to_owned(),
            connect_timeout: Duration::from_secs(1),
            total_timeout: Duration::from_secs(2),
            allow_plain_http,
        })
    }

    fn request() -> ChargeRequest {
        use crate::payment::{Currency, MerchantReference, Metadata, MinorUnits, PaymentMethodToken};
        ChargeRequest {
            idempotency_key: "k".into(),
            amount: MinorUnits::new(5).unwrap(),
            currency: Currency::from_code("EUR").unwrap(),
            payment_method: PaymentMethodToken::new("pm_card_visa").unwrap(),
            merchant_reference: MerchantReference::new("o-1").unwrap(),
            metadata: Metadata::default(),
        }
    }

    #[test]
    fn plain_http_is_refused_unless_allowed_for_a_local_provider() {
        let refused = gateway("http://provider.example", false).unwrap_err();
        assert!(refused.to_string().contains("https://"), "{refused}");
        assert!(gateway("http://127.0.0.1:9", true).is_ok());
        assert!(gateway("https://provider.example", false).is_ok());
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_and_an_oversized_answer_is_not_read() {
        let redirect =
            b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere.example/v1/charges\r\nContent-Length: 0\r\n\r\n";
        let url = serve(redirect.to_vec()).await;
        let answer = gateway(&url, true).unwrap().charge(&request()).await;
        assert!(
            matches!(answer, Err(GatewayError::Retryable { kind: RetryableKind::ServerError { status: 302 }, .. })),
            "{answer:?}"
        );

        let body = "x".repeat(MAX_ANSWER_BYTES + 1);
        let huge = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let url = serve(huge.into_bytes()).await;
        let answer = gateway(&url, true).unwrap().charge(&request()).await;
        assert!(
            matches!(&answer, Err(GatewayError::Retryable { kind: RetryableKind::InvalidResponse, detail }) if detail.contains("larger")),
            "{answer:?}"
        );
    }
}
