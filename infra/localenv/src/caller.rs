//! How the local clients (the demo's workload, its status reads, the tests) say who they are to
//! the local API, the way clients of the deployed one do: the caller of an AWS account signs its
//! requests with SigV4, its access key ID being the 12-digit account ID (LocalStack's convention,
//! which the local API Gateway follows: [`crate::apigw`]); a tenant of a JWT authorizer sends a
//! bearer token whose `sub` is its scope. No `X-Local-Scope` shortcut: the intake derives the
//! scope from the request context, as deployed.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;

/// The region the local API is signed for.
const REGION: &str = "us-east-1";

/// Whether `scope` is an AWS account ID (12 digits): such a caller signs its requests.
pub fn is_account(scope: &str) -> bool {
    scope.len() == 12 && scope.bytes().all(|b| b.is_ascii_digit())
}

/// `request`, identified as the caller whose scope is `scope`: SigV4-signed as that account, or
/// carrying a bearer JWT with `sub` = `scope`.
pub fn identified(mut request: reqwest::Request, scope: &str) -> reqwest::Request {
    if is_account(scope) {
        sign_as(&mut request, scope);
    } else {
        let claims = serde_json::json!({ "sub": scope }).to_string();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
        let token = format!("Bearer e30.{payload}.unsigned-local-token");
        request.headers_mut().insert(reqwest::header::AUTHORIZATION, token.parse().expect("a valid header value"));
    }
    request
}

/// Adds the SigV4 headers (`authorization`, `x-amz-date`) of access key `account`.
fn sign_as(request: &mut reqwest::Request, account: &str) {
    let identity: Identity = Credentials::new(account, "local-secret", None, None, "local").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name("execute-api")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .expect("complete signing parameters")
        .into();
    let host = request.url().host_str().unwrap_or_default().to_owned();
    let host = match request.url().port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    };
    let body = request.body().and_then(|b| b.as_bytes()).unwrap_or_default().to_vec();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .chain(std::iter::once(("host".to_owned(), host)))
        .collect();
    let signable = SignableRequest::new(
        request.method().as_str(),
        request.url().as_str(),
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(&body),
    )
    .expect("a signable request");
    let (instructions, _signature) = sign(signable, &params).expect("signing never fails here").into_parts();
    for (name, value) in instructions.headers() {
        request.headers_mut().insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).expect("a signing header name"),
            value.parse().expect("a signing header value"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accounts_caller_signs_and_the_local_api_reads_its_account() {
        let request = reqwest::Client::new().post("http://127.0.0.1:9000/payments").body("{}").build().unwrap();
        let signed = identified(request, "405608656907");
        let authorization = signed.headers()["authorization"].to_str().unwrap();
        assert!(authorization.starts_with("AWS4-HMAC-SHA256 Credential=405608656907/"), "{authorization}");
        assert!(signed.headers().contains_key("x-amz-date"));
        let context = crate::apigw::authorizer(Some(authorization)).unwrap();
        assert_eq!(context["iam"]["accountId"], "405608656907");
    }

    #[test]
    fn another_tenant_sends_a_bearer_token_naming_it() {
        let request = reqwest::Client::new().get("http://127.0.0.1:9000/payments/k").build().unwrap();
        let identified = identified(request, "merchant-west");
        let authorization = identified.headers()["authorization"].to_str().unwrap();
        let context = crate::apigw::authorizer(Some(authorization)).unwrap();
        assert_eq!(context["jwt"]["claims"]["sub"], "merchant-west");
    }
}
