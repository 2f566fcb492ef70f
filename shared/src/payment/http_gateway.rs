//! The HTTP adapter for a Stripe-style provider: `POST {base}/v1/charges` with an
//! `Idempotency-Key` header, JSON in and out, and a strict classification of what comes back.

use std::time::Duration;

use reqwest::StatusCode;

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
}

/// Calls the provider over HTTP(S).
#[derive(Debug, Clone)]
pub struct HttpGateway {
    client: reqwest::Client,
    charges_url: String,
}

impl HttpGateway {
    /// Builds the client (connection pool, timeouts) once, at cold start.
    pub fn new(config: &HttpGatewayConfig) -> Result<Self, BuildError> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.total_timeout)
            .build()
            .map_err(|e| BuildError(e.to_string()))?;
        Ok(Self { client, charges_url: format!("{}/v1/charges", config.base_url.trim_end_matches('/')) })
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
        let response = self
            .client
            .post(&self.charges_url)
            .header("Idempotency-Key", &request.idempotency_key)
            .json(&body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let retry_after = retry_after(&response);
        let bytes = response.bytes().await.map_err(transport_error)?;
        classify(status, retry_after, &bytes)
    }

    async fn lookup(&self, request: &ChargeLookup) -> Lookup {
        lookup_by_key_then_reference(self, request).await
    }
}

impl HttpGateway {
    /// `GET {base}/v1/charges?{field}={value}`: the charges listed, or why there is no answer.
    async fn list(&self, field: &str, value: &str) -> Result<Vec<Charge>, String> {
        let response =
            self.client.get(&self.charges_url).query(&[(field, value)]).send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            // 409: a request with this key is still in flight; 5xx, 429: no answer to trust.
            return Err(format!("lookup answered {status}"));
        }
        let list: ChargeList = serde_json::from_slice(&bytes).map_err(|e| format!("unreadable lookup answer: {e}"))?;
        Ok(list.data.into_iter().map(Charge::from).collect())
    }
}

/// By key first. Where nothing carries the key, by merchant reference, accepting only a single
/// charge of the same amount and currency (several are ambiguous: unknown, for an operator).
async fn lookup_by_key_then_reference(gateway: &HttpGateway, request: &ChargeLookup) -> Lookup {
    match gateway.list("idempotency_key", &request.idempotency_key).await {
        Ok(found) if !found.is_empty() => return Lookup::Charged(found[0].clone()),
        Ok(_) => {}
        Err(e) => return Lookup::Unknown(e),
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
        Err(e) => Lookup::Unknown(e),
    }
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
}
