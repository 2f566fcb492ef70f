//! What API Gateway's HTTP API does between a client and the intake, played locally: an HTTP
//! request becomes a payload-2.0 event whose request context carries the caller's identity as
//! the authorizer vouches for it, and the function's answer becomes the HTTP response.
//!
//! The identity is read the way the deployed API establishes it:
//! - a **SigV4-signed** request (`Authorization: AWS4-HMAC-SHA256 Credential=AKID/…`) is an IAM
//!   caller: `authorizer.iam`, whose `accountId` is the access key's account. As in LocalStack,
//!   an access key ID of 12 digits *is* the account ID (`curl --aws-sigv4 … --user
//!   405608656907:secret`), and any other key belongs to account `000000000000`. The signature is
//!   not verified here (LocalStack verifies none either); API Gateway would answer an unsigned or
//!   badly signed request to an IAM route `403` before the function runs;
//! - a **bearer JWT** (`Authorization: Bearer h.p.s`) is a JWT authorizer's: its claims become
//!   `authorizer.jwt.claims` (strings, as API Gateway passes them), unverified;
//! - anything else carries no authorizer context, and the intake answers `401` unless its local
//!   shortcut header is allowed and present.

use base64::Engine;
use serde_json::{Map, Value, json};

/// The account an access key belongs to: itself when it is 12 digits (LocalStack's rule), else
/// LocalStack's default account.
pub fn account_of(access_key_id: &str) -> String {
    if access_key_id.len() == 12 && access_key_id.bytes().all(|b| b.is_ascii_digit()) {
        access_key_id.to_owned()
    } else {
        "000000000000".to_owned()
    }
}

/// The access key of a SigV4 `Authorization` header.
fn sigv4_access_key(authorization: &str) -> Option<&str> {
    let rest = authorization.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let credential = rest.split(',').map(str::trim).find_map(|part| part.strip_prefix("Credential="))?;
    credential.split('/').next().filter(|k| !k.is_empty())
}

/// The claims of a bearer JWT's payload, as strings (the signature is not checked).
fn jwt_claims(authorization: &str) -> Option<Map<String, Value>> {
    let token = authorization.strip_prefix("Bearer ")?.trim();
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let Value::Object(claims) = serde_json::from_slice(&bytes).ok()? else { return None };
    Some(
        claims
            .into_iter()
            .map(|(name, value)| {
                let text = match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (name, Value::from(text))
            })
            .collect(),
    )
}

/// The request context's `authorizer`, from the request's `Authorization` header.
pub fn authorizer(authorization: Option<&str>) -> Option<Value> {
    let authorization = authorization?;
    if let Some(access_key) = sigv4_access_key(authorization) {
        let account = account_of(access_key);
        return Some(json!({"iam": {
            "accessKey": access_key, "accountId": account, "callerId": access_key,
            "principalOrgId": null, "userArn": format!("arn:aws:iam::{account}:user/local-caller"),
            "userId": access_key,
        }}));
    }
    jwt_claims(authorization).map(|claims| json!({"jwt": {"claims": claims, "scopes": null}}))
}

/// One HTTP request as the event builder needs it.
pub struct HttpRequest<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The raw query string (no `?`).
    pub query: &'a str,
    /// Header names (any case) and values; repeated names are joined with commas.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: &'a [u8],
}

/// The API's routes, as the template declares them: the route key a request matches, and its
/// path parameters.
fn route(method: &str, path: &str) -> (String, Option<Value>) {
    match (method, path.strip_prefix("/payments/"), path.strip_prefix("/problems/")) {
        ("POST", None, None) if path == "/payments" => ("POST /payments".into(), None),
        ("GET", Some(key), _) if !key.is_empty() => ("GET /payments/{key}".into(), Some(json!({"key": key}))),
        ("GET", _, Some(slug)) if !slug.is_empty() => ("GET /problems/{slug}".into(), Some(json!({"slug": slug}))),
        _ => ("$default".into(), None),
    }
}

/// The payload-2.0 event API Gateway would invoke the intake with for `request`.
pub fn event(request: &HttpRequest<'_>, request_id: &str, now_ms: i64) -> Value {
    let mut headers = Map::new();
    for (name, value) in &request.headers {
        let name = name.to_ascii_lowercase();
        match headers.get_mut(&name) {
            Some(Value::String(joined)) => {
                joined.push(',');
                joined.push_str(value);
            }
            _ => {
                headers.insert(name, Value::from(value.as_str()));
            }
        }
    }
    let authorization = headers.get("authorization").and_then(Value::as_str).map(str::to_owned);
    let (route_key, path_parameters) = route(request.method, request.path);
    let (body, encoded) = match std::str::from_utf8(request.body) {
        Ok(text) => (Value::from(text), false),
        Err(_) => (Value::from(base64::engine::general_purpose::STANDARD.encode(request.body)), true),
    };
    let mut context = json!({
        "accountId": "000000000000", "apiId": "local", "domainName": "127.0.0.1", "domainPrefix": "local",
        "http": {"method": request.method, "path": request.path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                 "userAgent": headers.get("user-agent").cloned().unwrap_or(Value::from(""))},
        "requestId": request_id, "routeKey": route_key, "stage": "$default",
        "time": humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(
            u64::try_from(now_ms).unwrap_or(0))).to_string(),
        "timeEpoch": now_ms,
    });
    if let Some(authorizer) = authorizer(authorization.as_deref()) {
        context["authorizer"] = authorizer;
    }
    let mut event = json!({
        "version": "2.0", "routeKey": route_key, "rawPath": request.path, "rawQueryString": request.query,
        "headers": headers, "requestContext": context, "body": body, "isBase64Encoded": encoded,
    });
    if let Some(parameters) = path_parameters {
        event["pathParameters"] = parameters;
    }
    event
}

/// An HTTP answer's parts.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// Header names and values, in order (repeats kept).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// A function's payload-2.0 answer (`statusCode`, `headers`, `body`, `isBase64Encoded`) as HTTP;
/// `None` when the answer is not one.
pub fn response(answer: &Value) -> Option<HttpAnswer> {
    let status = u16::try_from(answer.get("statusCode")?.as_u64()?).ok()?;
    let mut headers: Vec<(String, String)> = answer
        .get("headers")
        .and_then(Value::as_object)
        .map(|h| h.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default();
    if let Some(multi) = answer.get("multiValueHeaders").and_then(Value::as_object) {
        for (name, values) in multi {
            for value in values.as_array().into_iter().flatten().filter_map(Value::as_str) {
                headers.push((name.clone(), value.to_owned()));
            }
        }
    }
    let text = answer.get("body").and_then(Value::as_str).unwrap_or_default();
    let body = if answer.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) {
        base64::engine::general_purpose::STANDARD.decode(text).ok()?
    } else {
        text.as_bytes().to_vec()
    };
    Some(HttpAnswer { status, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(method: &'a str, path: &'a str, headers: &[(&str, &str)], body: &'a [u8]) -> HttpRequest<'a> {
        let headers = headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        HttpRequest { method, path, query: "", headers, body }
    }

    #[test]
    fn a_signed_request_carries_its_accounts_identity() {
        let auth = "AWS4-HMAC-SHA256 Credential=405608656907/20261205/us-east-1/execute-api/aws4_request, \
                    SignedHeaders=host;x-amz-date, Signature=abc";
        let event = event(&request("POST", "/payments", &[("Authorization", auth)], b"{}"), "r-1", 0);
        assert_eq!(event["requestContext"]["authorizer"]["iam"]["accountId"], "405608656907");
        assert_eq!(event["routeKey"], "POST /payments");
        let parsed = lambda_http::request::from_str(&event.to_string()).expect("lambda_http reads it");
        assert_eq!(parsed.uri().path(), "/payments");
        let other =
            authorizer(Some("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261205/us-east-1/execute-api/aws4_request"));
        assert_eq!(other.unwrap()["iam"]["accountId"], "000000000000", "LocalStack's default account");
    }

    #[test]
    fn a_bearer_jwt_carries_its_claims_as_strings() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"tenant-7","n":3}"#);
        let token = format!("Bearer e30.{payload}.sig");
        let event = event(&request("GET", "/payments/k", &[("authorization", &token)], b""), "r-2", 0);
        assert_eq!(event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"], "tenant-7");
        assert_eq!(event["requestContext"]["authorizer"]["jwt"]["claims"]["n"], "3");
        assert_eq!(
            (event["routeKey"].as_str(), event["pathParameters"]["key"].as_str()),
            (Some("GET /payments/{key}"), Some("k"))
        );
        assert!(authorizer(Some("Basic dXNlcjpwYXNz")).is_none());
    }

    #[test]
    fn answers_become_http_responses() {
        let answer =
            json!({"statusCode": 202, "headers": {"location": "/payments/k"}, "body": "{}", "isBase64Encoded": false});
        let http = response(&answer).unwrap();
        assert_eq!((http.status, http.body.as_slice()), (202, b"{}".as_slice()));
        assert_eq!(http.headers, vec![("location".to_owned(), "/payments/k".to_owned())]);
        assert!(response(&json!({"errorMessage": "boom"})).is_none());
    }
}
