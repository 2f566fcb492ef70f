//! RFC 9457 problem details (`application/problem+json`): one stable `type` per error, so
//! clients can branch on it without parsing prose.

use lambda_http::http::{HeaderValue, StatusCode};
use lambda_http::{Body, Response};
use serde_json::{Value, json};

/// The problem types' base when none is configured (`PROBLEM_TYPE_BASE`): the API's own
/// `/problems/` route, a relative reference (RFC 9457 resolves it against the request's URL), so
/// every `type` resolves to a section of `docs/problems.md` that this function serves
/// ([`documentation`]). A deployment may point it at its own documentation instead.
pub const DEFAULT_TYPE_BASE: &str = "/problems/";

/// `docs/problems.md`, served by the intake at `/problems` (whole) and `/problems/{slug}`.
pub const PAGE: &str = include_str!("../../../docs/problems.md");

/// The documentation of problem type `slug` (its section of [`PAGE`], heading included), or of
/// every type when `slug` is empty; `None` for a slug the API never answers with.
pub fn documentation(slug: &str) -> Option<&'static str> {
    if slug.is_empty() {
        return Some(PAGE);
    }
    let heading = format!("\n## {slug}\n");
    let start = PAGE.find(&heading)? + 1;
    let text = start + heading.len() - 1;
    let end = PAGE[text..].find("\n## ").map_or(PAGE.len(), |next| text + next);
    Some(PAGE[start..end].trim_end())
}

/// Every error the API can answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// 400: the Idempotency-Key header is absent.
    MissingIdempotencyKey,
    /// 400: the Idempotency-Key header is not 1–255 printable ASCII.
    InvalidIdempotencyKey(String),
    /// 400: the body is not valid JSON of the right shape, or a field is invalid.
    InvalidBody {
        /// JSON path of the offending field.
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// 401: no usable caller identity to scope the key to.
    Unauthenticated(crate::identity::IdentityError),
    /// 404: no such payment for this caller (or no such route).
    NotFound(String),
    /// 405: the route exists with other methods.
    MethodNotAllowed(&'static str),
    /// 409: the first request with this key is still being accepted.
    RequestInProgress {
        /// Seconds until the client should retry.
        retry_after_s: u64,
    },
    /// 413: the body is larger than 64 KiB.
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// 415: the body is not JSON.
    UnsupportedMediaType,
    /// 422: the key was used before with a different payload.
    IdempotencyKeyReused,
    /// 503: a dependency is temporarily unavailable; safe to retry with the same key.
    ServiceUnavailable {
        /// Seconds until the client should retry.
        retry_after_s: u64,
    },
    /// 500: anything unexpected; the correlation id finds it in the logs.
    Internal,
}

impl Problem {
    /// Status, stable slug, title.
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::MissingIdempotencyKey => {
                (StatusCode::BAD_REQUEST, "missing-idempotency-key", "Idempotency-Key header required")
            }
            Self::InvalidIdempotencyKey(_) => {
                (StatusCode::BAD_REQUEST, "invalid-idempotency-key", "Invalid Idempotency-Key header")
            }
            Self::InvalidBody { .. } => (StatusCode::BAD_REQUEST, "invalid-request-body", "Invalid request body"),
            Self::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated", "No caller identity"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed"),
            Self::RequestInProgress { .. } => {
                (StatusCode::CONFLICT, "request-in-progress", "A request with this key is in progress")
            }
            Self::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", "Request body too large"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Request body must be application/json")
            }
            Self::IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused with a different payload",
            ),
            Self::ServiceUnavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "service-unavailable", "Temporarily unavailable")
            }
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal-error", "Internal error"),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The stable slug (the `type` is the configured base + slug); also the metric reason.
    pub fn slug(&self) -> &'static str {
        self.parts().1
    }

    fn detail(&self) -> String {
        match self {
            Self::MissingIdempotencyKey => {
                "Send an Idempotency-Key header (1-255 printable ASCII characters) with every POST.".into()
            }
            Self::InvalidIdempotencyKey(why) => why.clone(),
            Self::InvalidBody { field, detail } => format!("{field}: {detail}"),
            Self::Unauthenticated(why) => why.to_string(),
            Self::NotFound(what) => what.clone(),
            Self::MethodNotAllowed(allowed) => format!("Allowed: {allowed}"),
            Self::RequestInProgress { retry_after_s } => {
                format!("The first request with this key is still being accepted; retry in {retry_after_s} s.")
            }
            Self::BodyTooLarge { limit } => format!("The body must be at most {limit} bytes."),
            Self::UnsupportedMediaType => "Send Content-Type: application/json.".into(),
            Self::IdempotencyKeyReused => {
                "This key was used before with a different payload. Use a new key for a new payment.".into()
            }
            Self::ServiceUnavailable { retry_after_s } => {
                format!("Retry in {retry_after_s} s with the same Idempotency-Key; the payment will not be duplicated.")
            }
            Self::Internal => "Unexpected error. Quote the correlation_id when reporting it.".into(),
        }
    }

    /// The response: `application/problem+json` whose `type` is `type_base` + slug, with
    /// Retry-After / Allow where they apply.
    pub fn response(&self, type_base: &str, instance: &str, correlation_id: &str) -> Response<Body> {
        let (status, slug, title) = self.parts();
        let mut body = json!({
            "type": format!("{type_base}{slug}"),
            "title": title,
            "status": status.as_u16(),
            "detail": self.detail(),
            "instance": instance,
            "correlation_id": correlation_id,
        });
        if let Self::InvalidBody { field, .. } = self {
            body["field"] = Value::from(field.clone());
        }
        let mut response = Response::builder()
            .status(status)
            .header("content-type", "application/problem+json")
            .header("x-correlation-id", correlation_id)
            .body(Body::Text(body.to_string()))
            .expect("static response parts are valid");
        let headers = response.headers_mut();
        match self {
            Self::RequestInProgress { retry_after_s } | Self::ServiceUnavailable { retry_after_s } => {
                headers.insert("retry-after", HeaderValue::from(*retry_after_s));
            }
            Self::MethodNotAllowed(allowed) => {
                headers.insert("allow", HeaderValue::from_static(allowed));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each problem.
    pub(crate) fn every_problem() -> Vec<Problem> {
        vec![
            Problem::MissingIdempotencyKey,
            Problem::InvalidIdempotencyKey("x".into()),
            Problem::InvalidBody { field: "amount".into(), detail: "x".into() },
            Problem::Unauthenticated(crate::identity::IdentityError::Missing),
            Problem::NotFound("x".into()),
            Problem::MethodNotAllowed("GET"),
            Problem::RequestInProgress { retry_after_s: 1 },
            Problem::BodyTooLarge { limit: 1 },
            Problem::UnsupportedMediaType,
            Problem::IdempotencyKeyReused,
            Problem::ServiceUnavailable { retry_after_s: 1 },
            Problem::Internal,
        ]
    }

    #[test]
    fn every_problem_type_resolves_to_its_section_of_the_problems_page() {
        for problem in every_problem() {
            let section = documentation(problem.slug())
                .unwrap_or_else(|| panic!("docs/problems.md has no section for {}", problem.slug()));
            assert!(section.starts_with(&format!("## {}\n", problem.slug())), "{section}");
            let status = format!("**{}.**", problem.status().as_u16());
            assert!(
                section.lines().nth(2).is_some_and(|l| l.starts_with(&status)),
                "{}: states {status}",
                problem.slug()
            );
            assert!(!section[3..].contains("\n## "), "one section only");
        }
        assert_eq!(PAGE.matches("\n## ").count(), every_problem().len(), "no section without a problem");
        assert_eq!(documentation("no-such-problem"), None);
        assert_eq!(documentation(""), Some(PAGE));
    }
}
