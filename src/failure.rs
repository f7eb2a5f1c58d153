//! The failure vocabulary: what an outcome means ([`Verdict`]), what exactly
//! happened ([`Kind`]), and for each kind of failure the sidecar answers
//! itself the one [`Answer`] it gives — status, stable code and class.
//!
//! Every reader takes its words from here: the answer's body
//! ([`crate::respond`]), the access line and the metrics ([`crate::edge`]),
//! the retry policy, the breaker and the replay worker (through
//! [`crate::classify::Class`]). A kind's class is decided in this table, not
//! where it is read, so an answer that says `transient` is never logged
//! `permanent`. The kinds of a backend's answer (`Status`, `GraphqlError`,
//! `ItemNotOk`) are judged by the `[classify]` rules instead.
//!
//! A leaf: it depends on nothing else in the crate, so every layer can use
//! it without an import loop.

use std::time::Duration;

use http::StatusCode;

/// What the outcome means for the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The upstream did what was asked.
    Success,
    /// A failure that may go away: worth a retry, counted by the breaker,
    /// spoolable.
    Transient,
    /// A failure that will not go away by trying again.
    Permanent,
}

impl Verdict {
    /// Stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Success => "success",
            Verdict::Transient => "transient",
            Verdict::Permanent => "permanent",
        }
    }
}

/// What exactly happened. Labels are stable: dashboards and alerts use them;
/// a few kinds share one label (the refusals of a bad request are all
/// `bad_request`, both TLS failures `tls`) and differ in their answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A normal answer.
    Ok,
    /// Nothing listening at the upstream address.
    ConnectRefused,
    /// TCP connect or TLS handshake did not finish in time.
    ConnectTimeout,
    /// The upstream host name did not resolve.
    Dns,
    /// The TLS handshake failed in a way another try might not.
    Tls,
    /// The upstream's certificate is not accepted by the roots: the next
    /// try will not verify either.
    TlsCertificate,
    /// Another failure while connecting.
    ConnectError,
    /// The connection closed or reset before a response head arrived.
    ResetBeforeResponse,
    /// The connection broke while the response body was being read.
    ResetMidBody,
    /// The attempt hit the per-try timeout.
    PerTryTimeout,
    /// An HTTP status that is a failure (see the verdict for which kind).
    Status(u16),
    /// HTTP 200 with a non-empty GraphQL `errors` list.
    GraphqlError,
    /// HTTP 200 with `data.<alias>.ok == false`.
    ItemNotOk,
    /// A GraphQL route answered with a body that is not JSON.
    BadJson,
    /// The response head was not valid HTTP.
    BadResponse,
    /// The breaker refused the attempt.
    CircuitOpen,
    /// The overall deadline passed.
    Deadline,
    /// The client's body is over the limit.
    BodyTooLarge,
    /// The client's body could not be read.
    ClientBody,
    /// The body of a GraphQL route is not a GraphQL request.
    InvalidGraphql,
    /// More root fields than `limits.max_root_fields`.
    TooManyRootFields,
    /// More variables than `limits.max_variables`.
    TooManyVariables,
    /// No valid `Host` (HTTP/1).
    InvalidHost,
    /// A method the sidecar does not forward (`CONNECT`).
    MethodNotAllowed,
    /// The spool is at capacity (or its disk is full) and refused a write.
    SpoolFull,
    /// The spool could not commit a write.
    SpoolUnavailable,
    /// The GraphQL response was too large to read; it passed unjudged.
    Unclassified,
    /// Anything else.
    Internal,
}

/// The classification of one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Class {
    /// Success, transient or permanent.
    pub verdict: Verdict,
    /// What happened.
    pub kind: Kind,
    /// Whether the request may have reached the backend. `false` only when it
    /// certainly did not (connect failed, breaker refused), which makes any
    /// request safe to retry.
    pub may_have_reached: bool,
    /// How long the upstream asked us to wait (`Retry-After`), uncapped.
    pub retry_after: Option<Duration>,
}

impl Class {
    /// A plain success.
    pub const OK: Class = Class {
        verdict: Verdict::Success,
        kind: Kind::Ok,
        may_have_reached: true,
        retry_after: None,
    };

    pub(crate) fn new(verdict: Verdict, kind: Kind, may_have_reached: bool) -> Self {
        Class {
            verdict,
            kind,
            may_have_reached,
            retry_after: None,
        }
    }

    /// Whether this is any kind of failure.
    pub fn is_failure(&self) -> bool {
        self.verdict != Verdict::Success
    }

    /// Whether the breaker should count this as a failure of the upstream.
    pub fn is_transient(&self) -> bool {
        self.verdict == Verdict::Transient
    }
}

/// The answer the sidecar writes for a request that failed with a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable machine code (`extensions.code`, the access line's
    /// `error_code`).
    pub code: &'static str,
    /// The class, when the kind decides it; `None` for the kinds of a
    /// backend's answer, which the `[classify]` rules judge.
    pub verdict: Option<Verdict>,
}

const fn answer(status: StatusCode, code: &'static str, verdict: Verdict) -> Answer {
    Answer {
        status,
        code,
        verdict: Some(verdict),
    }
}

impl Kind {
    /// Every kind (one `Status` standing for all), for tests and tables
    /// that walk them.
    pub const ALL: [Kind; 30] = [
        Kind::Ok,
        Kind::ConnectRefused,
        Kind::ConnectTimeout,
        Kind::Dns,
        Kind::Tls,
        Kind::TlsCertificate,
        Kind::ConnectError,
        Kind::ResetBeforeResponse,
        Kind::ResetMidBody,
        Kind::PerTryTimeout,
        Kind::Status(429),
        Kind::Status(503),
        Kind::Status(404),
        Kind::GraphqlError,
        Kind::ItemNotOk,
        Kind::BadJson,
        Kind::BadResponse,
        Kind::CircuitOpen,
        Kind::Deadline,
        Kind::BodyTooLarge,
        Kind::ClientBody,
        Kind::InvalidGraphql,
        Kind::TooManyRootFields,
        Kind::TooManyVariables,
        Kind::InvalidHost,
        Kind::MethodNotAllowed,
        Kind::SpoolFull,
        Kind::SpoolUnavailable,
        Kind::Unclassified,
        Kind::Internal,
    ];

    /// Number of distinct labels (see [`Kind::slot`]).
    pub const SLOTS: usize = 25;

    /// A dense index per label, for arrays of per-kind metric handles.
    pub fn slot(self) -> usize {
        match self {
            Kind::Ok => 0,
            Kind::ConnectRefused => 1,
            Kind::ConnectTimeout => 2,
            Kind::Dns => 3,
            Kind::Tls | Kind::TlsCertificate => 4,
            Kind::ConnectError => 5,
            Kind::ResetBeforeResponse => 6,
            Kind::ResetMidBody => 7,
            Kind::PerTryTimeout => 8,
            Kind::Status(429) => 9,
            Kind::Status(s) if s >= 500 => 10,
            Kind::Status(_) => 11,
            Kind::GraphqlError => 12,
            Kind::ItemNotOk => 13,
            Kind::BadJson => 14,
            Kind::BadResponse => 15,
            Kind::CircuitOpen => 16,
            Kind::Deadline => 17,
            Kind::BodyTooLarge => 18,
            Kind::ClientBody => 19,
            Kind::InvalidGraphql
            | Kind::TooManyRootFields
            | Kind::TooManyVariables
            | Kind::InvalidHost
            | Kind::MethodNotAllowed => 20,
            Kind::Unclassified => 21,
            Kind::Internal => 22,
            Kind::SpoolFull => 23,
            Kind::SpoolUnavailable => 24,
        }
    }

    /// Stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::ConnectRefused => "connect_refused",
            Kind::ConnectTimeout => "connect_timeout",
            Kind::Dns => "dns",
            Kind::Tls | Kind::TlsCertificate => "tls",
            Kind::ConnectError => "connect_error",
            Kind::ResetBeforeResponse => "reset_before_response",
            Kind::ResetMidBody => "reset_mid_body",
            Kind::PerTryTimeout => "per_try_timeout",
            Kind::Status(429) => "status_429",
            Kind::Status(s) if s >= 500 => "status_5xx",
            Kind::Status(_) => "status_4xx",
            Kind::GraphqlError => "graphql_error",
            Kind::ItemNotOk => "item_not_ok",
            Kind::BadJson => "bad_json",
            Kind::BadResponse => "bad_response",
            Kind::CircuitOpen => "circuit_open",
            Kind::Deadline => "deadline",
            Kind::BodyTooLarge => "body_too_large",
            Kind::ClientBody => "client_body",
            Kind::InvalidGraphql
            | Kind::TooManyRootFields
            | Kind::TooManyVariables
            | Kind::InvalidHost
            | Kind::MethodNotAllowed => "bad_request",
            Kind::SpoolFull => "spool_full",
            Kind::SpoolUnavailable => "spool_unavailable",
            Kind::Unclassified => "unclassified",
            Kind::Internal => "internal",
        }
    }

    /// The one answer for a request that failed with this kind.
    pub fn answer(self) -> Answer {
        use StatusCode as S;
        use Verdict::{Permanent, Success, Transient};
        match self {
            Kind::Ok => answer(S::OK, "ok", Success),
            Kind::ConnectRefused | Kind::ConnectTimeout | Kind::ConnectError => {
                answer(S::SERVICE_UNAVAILABLE, "upstream_connect_failed", Transient)
            }
            Kind::Dns => answer(S::SERVICE_UNAVAILABLE, "upstream_unavailable", Transient),
            Kind::Tls => answer(S::BAD_GATEWAY, "upstream_tls_failed", Transient),
            Kind::TlsCertificate => answer(S::BAD_GATEWAY, "upstream_tls_failed", Permanent),
            Kind::ResetBeforeResponse | Kind::ResetMidBody => {
                answer(S::BAD_GATEWAY, "upstream_reset", Transient)
            }
            Kind::PerTryTimeout => answer(S::GATEWAY_TIMEOUT, "upstream_timeout", Transient),
            Kind::BadJson | Kind::BadResponse => {
                answer(S::BAD_GATEWAY, "bad_upstream_response", Transient)
            }
            Kind::CircuitOpen => answer(S::SERVICE_UNAVAILABLE, "circuit_open", Transient),
            Kind::Deadline => answer(S::GATEWAY_TIMEOUT, "deadline_exceeded", Transient),
            Kind::BodyTooLarge => answer(S::PAYLOAD_TOO_LARGE, "request_too_large", Permanent),
            Kind::ClientBody => answer(S::BAD_REQUEST, "client_body_error", Permanent),
            Kind::InvalidGraphql => answer(S::BAD_REQUEST, "invalid_graphql_request", Permanent),
            Kind::TooManyRootFields => answer(S::BAD_REQUEST, "too_many_root_fields", Permanent),
            Kind::TooManyVariables => answer(S::BAD_REQUEST, "too_many_variables", Permanent),
            Kind::InvalidHost => answer(S::BAD_REQUEST, "invalid_host", Permanent),
            Kind::MethodNotAllowed => {
                answer(S::METHOD_NOT_ALLOWED, "method_not_allowed", Permanent)
            }
            Kind::SpoolFull => answer(S::SERVICE_UNAVAILABLE, "spool_full", Transient),
            Kind::SpoolUnavailable => {
                answer(S::SERVICE_UNAVAILABLE, "spool_unavailable", Transient)
            }
            Kind::Internal => answer(S::INTERNAL_SERVER_ERROR, "internal_error", Permanent),
            // A backend's answer is passed on, not written by the sidecar;
            // should one ever fail as an error, it is an internal failure
            // of the class the rules gave it.
            Kind::Status(_) | Kind::GraphqlError | Kind::ItemNotOk | Kind::Unclassified => Answer {
                status: S::INTERNAL_SERVER_ERROR,
                code: "internal_error",
                verdict: None,
            },
        }
    }
}

/// Why a failed request was not tried again. Stable labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum NotRetried {
    /// The failure is permanent.
    Permanent = 1,
    /// `max_attempts` reached.
    MaxAttempts,
    /// The request may have reached the backend and is not idempotent.
    NotIdempotent,
    /// The body was too large to keep for a replay.
    BodyOverCap,
    /// The shared retry budget is spent.
    BudgetExhausted,
    /// No attempt could finish before the deadline.
    Deadline,
    /// The breaker is open.
    BreakerOpen,
    /// The upstream asked to wait longer than `retry.retry_after_max`.
    RetryAfterTooLong,
}

impl NotRetried {
    /// Stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            NotRetried::Permanent => "permanent",
            NotRetried::MaxAttempts => "max_attempts",
            NotRetried::NotIdempotent => "not_idempotent",
            NotRetried::BodyOverCap => "body_over_cap",
            NotRetried::BudgetExhausted => "budget_exhausted",
            NotRetried::Deadline => "deadline",
            NotRetried::BreakerOpen => "breaker_open",
            NotRetried::RetryAfterTooLong => "retry_after_too_long",
        }
    }

    /// Every reason, for pre-registering metric series.
    pub const ALL: [NotRetried; 8] = [
        NotRetried::Permanent,
        NotRetried::MaxAttempts,
        NotRetried::NotIdempotent,
        NotRetried::BodyOverCap,
        NotRetried::BudgetExhausted,
        NotRetried::Deadline,
        NotRetried::BreakerOpen,
        NotRetried::RetryAfterTooLong,
    ];

    /// The reason stored as `v` (its discriminant).
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| *r as u8 == v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_the_sidecar_answers_has_a_class_and_one_status_per_code() {
        let mut codes = std::collections::HashMap::new();
        for kind in Kind::ALL {
            let a = kind.answer();
            assert!(kind.slot() < Kind::SLOTS, "{kind:?}");
            let Some(v) = a.verdict else {
                assert!(matches!(
                    kind,
                    Kind::Status(_) | Kind::GraphqlError | Kind::ItemNotOk | Kind::Unclassified
                ));
                continue;
            };
            assert_eq!(v == Verdict::Success, kind == Kind::Ok, "{kind:?}");
            let seen = codes.entry(a.code).or_insert(a.status);
            assert_eq!(*seen, a.status, "{kind:?}: {} has two statuses", a.code);
            // What a client may try again is what the sidecar calls transient:
            // never a 4xx.
            if v == Verdict::Transient {
                assert!(a.status.is_server_error(), "{kind:?}");
            }
        }
    }
}
