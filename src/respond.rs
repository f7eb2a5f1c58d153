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

/// Describe `err` for the client: its kind's answer from the one table
/// ([`crate::failure`]), with the class the access line and the metrics
/// record (the same [`Class::of_error`]).
pub fn describe(err: &Error, ex: &Exchange) -> Failure {
    let e: &(dyn std::error::Error + 'static) = err.as_ref();
    let class = Class::of_error(err);
    let answer = class.kind.answer();
    let mut message = err.to_string();
    let mut retry_after = None;
    if let Some(open) = error::cause_ref::<error::CircuitOpen>(e) {
        retry_after = Some(open.retry_after);
    }
    if let Some(full) = error::cause_ref::<error::SpoolFull>(e) {
        // The spool drains as the backend answers: try again soon.
        retry_after = Some(Duration::from_secs(1));
        message = full.to_string();
    }
    if answer.code == "internal_error" {
        tracing::warn!(error = %message, "unexpected error answered with 500");
    }
    let mut f = Failure {
        status: answer.status,
        code: answer.code,
        message,
        class: class.verdict,
        retryable: class.verdict == Verdict::Transient,
        retry_after,
    };
    // The budget speaks of the upstream's failure that was not tried again;
    // a refusal of the sidecar's own (the spool, the breaker, the deadline)
    // keeps its code.
    let own = matches!(
        class.kind,
        Kind::SpoolFull | Kind::SpoolUnavailable | Kind::CircuitOpen | Kind::Deadline
    );
    if !own
        && class.verdict == Verdict::Transient
        && ex.not_retried() == Some(NotRetried::BudgetExhausted)
    {
        f.status = StatusCode::SERVICE_UNAVAILABLE;
        f.code = "retry_budget_exhausted";
        f.message = format!("{}; not retried: the retry budget is exhausted", f.message);
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
                "errors": [graphql_error(GraphqlError {
                    message: &failure.message,
                    code: failure.code,
                    class: failure.class,
                    retryable: failure.retryable,
                    attempts,
                    request_id,
                    alias: None,
                })]
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

/// One GraphQL error the sidecar writes, whole or for one alias.
#[derive(Debug, Clone, Copy)]
pub struct GraphqlError<'a> {
    /// Human-readable explanation.
    pub message: &'a str,
    /// Stable machine code.
    pub code: &'a str,
    /// The class.
    pub class: Verdict,
    /// Whether trying again later can help.
    pub retryable: bool,
    /// Attempts made.
    pub attempts: u32,
    /// The request id.
    pub request_id: &'a str,
    /// The alias the error concerns (its `path`), when one.
    pub alias: Option<&'a str>,
}

/// The one shape of a GraphQL error the sidecar writes: the answer to a
/// failed request ([`failure_response`]) and an alias's error in a merged
/// batch answer ([`crate::retry::partial`]) alike, so the SDK and a
/// dashboard read the same `extensions` everywhere.
pub fn graphql_error(e: GraphqlError<'_>) -> serde_json::Value {
    let mut v = json!({
        "message": e.message,
        "extensions": {
            "code": e.code,
            "class": e.class.as_str(),
            "retryable": e.retryable,
            "attempts": e.attempts,
            "request_id": e.request_id,
        }
    });
    if let Some(alias) = e.alias {
        v["path"] = json!([alias]);
    }
    v
}

/// The structured response for `err` on this exchange.
pub fn error_response(err: &Error, ex: &Exchange) -> (Response<ResponseBody>, Failure) {
    let failure = describe(err, ex);
    (failure_response(&failure, ex), failure)
}

/// Replace a final answer the client could not use: a GraphQL route's 200
/// whose body is not JSON becomes a 502 `bad_upstream_response`; the code
/// written, for the access line.
pub fn rescue_response(
    resp: Response<ResponseBody>,
    ex: &Exchange,
) -> (Response<ResponseBody>, Option<&'static str>) {
    let Some(class) = resp.extensions().get::<Class>().copied() else {
        return (resp, None);
    };
    if class.kind != Kind::BadJson {
        return (resp, None);
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
    (out, Some(failure.code))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::error::ConnectError;

    fn io(kind: std::io::ErrorKind) -> Error {
        Box::new(std::io::Error::new(kind, "x"))
    }

    /// The kinds no case below raises, and why: both wrap a `hyper::Error`,
    /// which only hyper can make (the fault suites raise them for real).
    pub(crate) const NOT_RAISED_HERE: [Kind; 2] = [Kind::ClientBody, Kind::ResetMidBody];

    /// One error of every kind the sidecar answers itself, with its kind.
    pub(crate) fn raised_failures() -> Vec<(Error, Kind)> {
        use std::io::ErrorKind as Io;
        let limit = |kind| error::LimitExceeded {
            kind,
            what: "root fields",
            key: "limits.max_root_fields",
            limit: 1,
            found: 2,
        };
        let cases: Vec<(Error, Kind)> = vec![
            (
                Box::new(error::UpstreamTimeout(Duration::from_secs(3))),
                Kind::PerTryTimeout,
            ),
            (
                Box::new(error::DeadlineExceeded(Duration::from_secs(8))),
                Kind::Deadline,
            ),
            (
                Box::new(error::CircuitOpen {
                    retry_after: Duration::from_secs(5),
                }),
                Kind::CircuitOpen,
            ),
            (
                Box::new(error::BodyTooLarge { limit: 1 }),
                Kind::BodyTooLarge,
            ),
            (
                Box::new(error::InvalidGraphql("x".into())),
                Kind::InvalidGraphql,
            ),
            (
                Box::new(limit(Kind::TooManyRootFields)),
                Kind::TooManyRootFields,
            ),
            (
                Box::new(limit(Kind::TooManyVariables)),
                Kind::TooManyVariables,
            ),
            (
                Box::new(error::MethodNotAllowed(http::Method::CONNECT)),
                Kind::MethodNotAllowed,
            ),
            (Box::new(error::InvalidHost("two")), Kind::InvalidHost),
            (
                Box::new(error::SpoolFull("max_entries".into())),
                Kind::SpoolFull,
            ),
            (
                Box::new(error::SpoolUnavailable("disk".into())),
                Kind::SpoolUnavailable,
            ),
            (
                Box::new(error::BadUpstreamResponse("x".into())),
                Kind::BadResponse,
            ),
            (
                Box::new(ConnectError(io(Io::ConnectionRefused))),
                Kind::ConnectRefused,
            ),
            (
                Box::new(ConnectError(io(Io::TimedOut))),
                Kind::ConnectTimeout,
            ),
            (Box::new(ConnectError(io(Io::Other))), Kind::ConnectError),
            (
                Box::new(ConnectError(Box::new(crate::classify::DnsError(
                    std::io::Error::other("nx"),
                )))),
                Kind::Dns,
            ),
            (io(Io::ConnectionReset), Kind::ResetBeforeResponse),
            (
                Box::new(rustls::Error::General("handshake".into())),
                Kind::Tls,
            ),
            (
                Box::new(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                )),
                Kind::TlsCertificate,
            ),
            ("something else".into(), Kind::Internal),
        ];
        // Every kind the sidecar answers itself is raised, but those that
        // cannot be made here; a new kind needs a case.
        for kind in Kind::ALL {
            let answered_here = kind.answer().verdict.is_some_and(|v| v != Verdict::Success)
                && kind != Kind::BadJson
                && !NOT_RAISED_HERE.contains(&kind);
            assert_eq!(
                answered_here,
                cases.iter().any(|(_, k)| *k == kind),
                "{kind:?}: a case in raised_failures"
            );
        }
        cases
    }

    /// Every failure the sidecar raises, walked through the answer and
    /// through what the access line and the metrics record: one kind, one
    /// class, the kind's code and status.
    #[test]
    fn every_failure_is_answered_and_recorded_alike() {
        let cases = raised_failures();
        let ex = Exchange::new(HeaderValue::from_static("req-1"));
        // A spent retry budget renames an upstream failure, not a refusal
        // of the sidecar's own.
        let spent = Exchange::new(HeaderValue::from_static("req-2"));
        spent.set_not_retried(NotRetried::BudgetExhausted);
        let full: Error = Box::new(error::SpoolFull("max_entries".into()));
        assert_eq!(describe(&full, &spent).code, "spool_full");
        let reset = io(std::io::ErrorKind::ConnectionReset);
        assert_eq!(describe(&reset, &spent).code, "retry_budget_exhausted");
        for (err, kind) in cases {
            let recorded = Class::of_error(&err);
            let answered = describe(&err, &ex);
            let table = kind.answer();
            assert_eq!(recorded.kind, kind, "{err}");
            assert_eq!(Some(recorded.verdict), table.verdict, "{err}");
            assert_eq!(answered.class, recorded.verdict, "{err}");
            assert_eq!(
                answered.retryable,
                recorded.verdict == Verdict::Transient,
                "{err}"
            );
            assert_eq!(
                (answered.status, answered.code),
                (table.status, table.code),
                "{err}"
            );
            // The body says what the line says.
            let resp = failure_response(&answered, &ex);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().bytes().unwrap()).unwrap();
            let text = body.to_string();
            assert!(
                text.contains(&format!("\"class\":\"{}\"", recorded.verdict.as_str())),
                "{text}"
            );
            assert!(text.contains(table.code), "{text}");
        }
    }
}
