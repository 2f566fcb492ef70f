//! Who is calling: the scope every idempotency key belongs to, read the way the deployed API
//! hands it over.
//!
//! **Trust by origin.** What API Gateway's authorizer vouches for — a Lambda authorizer's `scope`,
//! a JWT claim, the IAM caller's account — is identity: checked for shape and length, never read
//! as user data. An AWS account ID is twelve digits, and about one in ten passes the Luhn check:
//! run through the card-number detector, those accounts would be locked out. What the client
//! itself sends (the local `X-Local-Scope` shortcut included) is untrusted input and goes through
//! the detector like every other header.

use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt};
use lambda_idempotency::Scope;
use payments_core::payment::card_data::contains_card_number;
use serde_json::Value;

/// The local-run header naming the caller, honoured only when `ALLOW_SCOPE_HEADER=true`.
pub const SCOPE_HEADER: &str = "x-local-scope";

/// Where the caller's identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A Lambda authorizer's context key `scope`.
    LambdaAuthorizer,
    /// A JWT authorizer's claim (`SCOPE_CLAIM`).
    JwtClaim,
    /// The IAM caller's AWS account (SigV4-signed requests).
    IamAccount,
    /// The local shortcut header.
    LocalHeader,
}

/// Why a request has no usable identity. The texts never quote the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Nothing names the caller.
    #[error("The request carries no caller identity to scope its idempotency key to.")]
    Missing,
    /// An authorizer's identity of the wrong shape (an account ID that is not 12 digits, a claim
    /// with spaces or over 128 characters).
    #[error(
        "The caller identity from the {0} is not a valid scope (printable ASCII without spaces, at most 128 \
         characters; an AWS account ID is 12 digits)."
    )]
    Malformed(&'static str),
    /// The client-sent shortcut header looks like a card number.
    #[error("The X-Local-Scope header looks like card data; sign the request (SigV4) to act as an AWS account.")]
    LooksLikeCardData,
}

impl Origin {
    fn name(self) -> &'static str {
        match self {
            Self::LambdaAuthorizer => "Lambda authorizer",
            Self::JwtClaim => "JWT claim",
            Self::IamAccount => "IAM caller",
            Self::LocalHeader => "X-Local-Scope header",
        }
    }

    /// Checks `raw` as identity of this origin.
    fn scope(self, raw: &str) -> Result<Scope, IdentityError> {
        match self {
            Self::IamAccount if raw.len() != 12 || !raw.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(IdentityError::Malformed(self.name()));
            }
            Self::LocalHeader if contains_card_number(raw) => return Err(IdentityError::LooksLikeCardData),
            _ => {}
        }
        Scope::new(raw).map_err(|_| IdentityError::Malformed(self.name()))
    }
}

/// The caller's scope and where it came from: the authorizer first (a Lambda authorizer's
/// `scope`, else the JWT claim `scope_claim`, else the IAM account), then, only when
/// `allow_header`, [`SCOPE_HEADER`].
pub fn caller_scope(
    request: &Request,
    scope_claim: &str,
    allow_header: bool,
) -> Result<(Scope, Origin), IdentityError> {
    let from_authorizer = request.request_context_ref().and_then(|context| {
        let RequestContext::ApiGatewayV2(context) = context else { return None };
        let authorizer = context.authorizer.as_ref()?;
        let lambda = authorizer.fields.get("scope").and_then(Value::as_str).map(|s| (Origin::LambdaAuthorizer, s));
        let jwt = || authorizer.jwt.as_ref()?.claims.get(scope_claim).map(|s| (Origin::JwtClaim, s.as_str()));
        let iam = || authorizer.iam.as_ref()?.account_id.as_deref().map(|s| (Origin::IamAccount, s));
        lambda.or_else(jwt).or_else(iam).map(|(origin, raw)| (origin, raw.to_owned()))
    });
    let from_header = || {
        allow_header
            .then(|| request.headers().get(SCOPE_HEADER)?.to_str().ok().map(|s| (Origin::LocalHeader, s.to_owned())))
            .flatten()
    };
    let (origin, raw) = from_authorizer.or_else(from_header).ok_or(IdentityError::Missing)?;
    Ok((origin.scope(&raw)?, origin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with_authorizer(authorizer: Value, headers: &[(&str, &str)]) -> Request {
        let headers: serde_json::Map<String, Value> =
            headers.iter().map(|(k, v)| ((*k).to_owned(), Value::from(*v))).collect();
        let event = json!({
            "version": "2.0", "routeKey": "POST /payments", "rawPath": "/payments", "rawQueryString": "",
            "headers": headers,
            "requestContext": {
                "accountId": "000000000000", "apiId": "api", "domainName": "api.example", "domainPrefix": "api",
                "http": {"method": "POST", "path": "/payments", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                         "userAgent": "tests"},
                "requestId": "r", "routeKey": "POST /payments", "stage": "$default",
                "time": "27/Nov/2026:10:00:00 +0000", "timeEpoch": 1_795_000_000_000_i64,
                "authorizer": authorizer
            },
            "isBase64Encoded": false
        });
        lambda_http::request::from_str(&event.to_string()).unwrap()
    }

    fn iam(account: &str) -> Value {
        json!({"iam": {"accessKey": "AKIA", "accountId": account, "callerId": "AKIA", "userArn":
            format!("arn:aws:iam::{account}:user/u"), "userId": "AKIA"}})
    }

    #[test]
    fn an_account_id_that_passes_the_luhn_check_is_an_identity_not_card_data() {
        // 405608656907 passes the Luhn check: read as user data it would be refused as a card.
        assert!(contains_card_number("405608656907"));
        for account in ["405608656907", "945807302157"] {
            let (scope, origin) = caller_scope(&with_authorizer(iam(account), &[]), "sub", false).unwrap();
            assert_eq!((scope.as_str(), origin), (account, Origin::IamAccount));
        }
    }

    #[test]
    fn an_authorizers_identity_is_checked_for_shape() {
        for account in ["12345678901", "1234567890123", "12345678901a", ""] {
            let refused = caller_scope(&with_authorizer(iam(account), &[]), "sub", false).unwrap_err();
            assert_eq!(refused, IdentityError::Malformed("IAM caller"), "{account:?}");
        }
        let jwt = json!({"jwt": {"claims": {"sub": "tenant with spaces"}, "scopes": null}});
        assert_eq!(
            caller_scope(&with_authorizer(jwt, &[]), "sub", false).unwrap_err(),
            IdentityError::Malformed("JWT claim")
        );
        let long = json!({"lambda": {"scope": "x".repeat(129)}});
        assert!(caller_scope(&with_authorizer(long, &[]), "sub", false).is_err());
    }

    #[test]
    fn the_lambda_authorizer_wins_then_the_claim_then_the_account() {
        let all = json!({"lambda": {"scope": "tenant-a"}, "jwt": {"claims": {"sub": "4242424242424242"}},
                         "iam": {"accountId": "111111111111"}});
        assert_eq!(caller_scope(&with_authorizer(all, &[]), "sub", false).unwrap().1, Origin::LambdaAuthorizer);
        // A claim is identity too: a 16-digit subject that passes the Luhn check is served.
        let jwt = json!({"jwt": {"claims": {"sub": "4242424242424242"}}, "iam": {"accountId": "111111111111"}});
        let (scope, origin) = caller_scope(&with_authorizer(jwt, &[]), "sub", false).unwrap();
        assert_eq!((scope.as_str(), origin), ("4242424242424242", Origin::JwtClaim));
    }

    #[test]
    fn the_local_header_is_client_input_honoured_only_when_allowed() {
        let none = json!({});
        let header = [("x-local-scope", "acme")];
        assert_eq!(caller_scope(&with_authorizer(none.clone(), &header), "sub", false), Err(IdentityError::Missing));
        let (scope, origin) = caller_scope(&with_authorizer(none.clone(), &header), "sub", true).unwrap();
        assert_eq!((scope.as_str(), origin), ("acme", Origin::LocalHeader));
        let card = [("x-local-scope", "405608656907")];
        assert_eq!(caller_scope(&with_authorizer(none, &card), "sub", true), Err(IdentityError::LooksLikeCardData));
    }
}
