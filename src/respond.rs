//! The one place that turns an error into a response.
//!
//! Every failure the sidecar could not hide becomes a structured answer with
//! a stable machine `code`, the class, whether a retry can help, the attempts
//! made and the request id — in the GraphQL error envelope on GraphQL
//! requests (so the SDK reads a normal GraphQL error) and as RFC 9457
//! problem details elsewhere. Status: 502 bad upstream response, 503
//! unavailable or circuit open, 504 timeout; `Retry-After` where a wait is
//! known. Unknown errors are logged and answered 500.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::body::ResponseBody;
use crate::classify::{Class, Kind, Verdict};
use crate::error::{self, Error};
use crate::exchange::{Exchange, NotRetried};
use crate::route::ErrorFormat;

/// What the client is told about a failure.
#[derive(Debug, Clone)]
pub struct Failure {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine code, e.g. `upstream_timeout`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The class (`transient` or `permanent`).
    pub class: Verdict,
    /// Whether trying again later can help.
    pub retryable: bool,
    /// How long to wait before trying again, when known.
    pub retry_after: Option<Duration>,
}

/// Describe `err` for the client.
pub fn describe(err: &Error, ex: &Exchange) -> Failure {
    let e: &(dyn std::error::Error + 'static) = err.as_ref();
    let class = Class::of_error(err);
    let message = err.to_string();
    let fail = |status, code, class: Verdict| Failure {
        status,
        code,
        message: message.clone(),
        class,
        retryable: class == Verdict::Transient,
        retry_after: None,
    };
    if error::is_caused_by::<error::BodyTooLarge>(e) {
        return fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            Verdict::Permanent,
        );
    }
    if let Some(over) = error::cause_ref::<error::LimitExceeded>(e) {
        return fail(StatusCode::BAD_REQUEST, over.code, Verdict::Permanent);
    }
    if error::is_caused_by::<error::InvalidGraphql>(e) {
        return fail(
            StatusCode::BAD_REQUEST,
            "invalid_graphql_request",
            Verdict::Permanent,
        );
    }
    if error::is_caused_by::<error::InvalidHost>(e) {
        return fail(StatusCode::BAD_REQUEST, "invalid_host", Verdict::Permanent);
    }
    if error::is_caused_by::<error::MethodNotAllowed>(e) {
        return fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            Verdict::Permanent,
        );
    }
    if error::is_caused_by::<error::ClientBodyError>(e) {
        return fail(
            StatusCode::BAD_REQUEST,
            "client_body_error",
            Verdict::Permanent,
        );
    }
    if let Some(full) = error::cause_ref::<error::SpoolFull>(e) {
        return Failure {
            retry_after: Some(Duration::from_secs(1)),
            message: full.to_string(),
            ..fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "spool_full",
                Verdict::Transient,
            )
        };
    }
    if error::is_caused_by::<error::SpoolUnavailable>(e) {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "spool_unavailable",
            Verdict::Transient,
        );
    }
    if let Some(open) = error::cause_ref::<error::CircuitOpen>(e) {
        return Failure {
            retry_after: Some(open.retry_after),
            ..fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "circuit_open",
                Verdict::Transient,
            )
        };
    }
    if error::is_caused_by::<error::DeadlineExceeded>(e) {
        return fail(
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded",
            Verdict::Transient,
        );
    }
    let (status, code) = match class.kind {
        Kind::PerTryTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        Kind::ConnectRefused | Kind::ConnectTimeout | Kind::ConnectError => {
            (StatusCode::SERVICE_UNAVAILABLE, "upstream_connect_failed")
        }
        Kind::Dns => (StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable"),
        Kind::Tls => (StatusCode::BAD_GATEWAY, "upstream_tls_failed"),
        Kind::ResetBeforeResponse | Kind::ResetMidBody => {
            (StatusCode::BAD_GATEWAY, "upstream_reset")
        }
        Kind::BadResponse | Kind::BadJson => (StatusCode::BAD_GATEWAY, "bad_upstream_response"),
        _ => {
            tracing::warn!(error = %message, "unexpected error answered with 500");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
        }
    };
    let mut f = fail(status, code, class.verdict);
    if class.verdict == Verdict::Transient && ex.not_retried() == Some(NotRetried::BudgetExhausted)
    {
        f.status = StatusCode::SERVICE_UNAVAILABLE;
        f.code = "retry_budget_exhausted";
        f.message = format!("{message}; not retried: the retry budget is exhausted");
    }
    f
}

/// The response for `failure` on this exchange.
pub fn failure_response(failure: &Failure, ex: &Exchange) -> Response<ResponseBody> {
    let format = ex.routed().map_or(ErrorFormat::Problem, |r| r.error_format);
    let attempts = ex.attempts();
    let request_id = ex.request_id.to_str().unwrap_or("");
    let (content_type, body) = match format {
        ErrorFormat::Graphql => (
            "application/json",
            json!({
                "errors": [{
                    "message": failure.message,
                    "extensions": {
                        "code": failure.code,
                        "class": failure.class.as_str(),
                        "retryable": failure.retryable,
                        "attempts": attempts,
                        "request_id": request_id,
                    }
                }]
            }),
        ),
        ErrorFormat::Problem => (
            "application/problem+json",
            json!({
                "type": format!("urn:datalayer-sidecar:error:{}", failure.code),
                "title": failure.status.canonical_reason().unwrap_or("Error"),
                "status": failure.status.as_u16(),
                "detail": failure.message,
                "code": failure.code,
                "class": failure.class.as_str(),
                "retryable": failure.retryable,
                "attempts": attempts,
                "request_id": request_id,
            }),
        ),
    };
    let mut resp = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
    *resp.status_mut() = failure.status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(wait) = failure.retry_after {
        // Round up: answering "0" would invite an immediate retry.
        let secs = wait
            .as_secs()
            .saturating_add(u64::from(wait.subsec_nanos() > 0));
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    resp
}

/// The structured response for `err` on this exchange.
pub fn error_response(err: &Error, ex: &Exchange) -> (Response<ResponseBody>, Failure) {
    let failure = describe(err, ex);
    (failure_response(&failure, ex), failure)
}

/// Replace a final answer the client could not use: a GraphQL route's 200
/// whose body is not JSON becomes a 502 `bad_upstream_response`.
pub fn rescue_response(resp: Response<ResponseBody>, ex: &Exchange) -> Response<ResponseBody> {
    let Some(class) = resp.extensions().get::<Class>().copied() else {
        return resp;
    };
    if class.kind != Kind::BadJson {
        return resp;
    }
    let failure = Failure {
        status: StatusCode::BAD_GATEWAY,
        code: "bad_upstream_response",
        message: "the upstream answered a GraphQL request with a body that is not JSON".into(),
        class: class.verdict,
        retryable: true,
        retry_after: None,
    };
    let mut out = failure_response(&failure, ex);
    out.extensions_mut().insert(class);
    out
}
