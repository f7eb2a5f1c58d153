//! Error leaves raised inside the stack, and helpers to find them in a chain.
//!
//! Inside the stack every error is a boxed [`Error`]; only [`crate::respond`]
//! turns one into a status code, by looking for these leaf types anywhere in
//! the source chain (the upstream client wraps our body errors in its own).

use std::time::Duration;

/// The boxed error every service in the stack returns.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// An attempt did not finish within the per-try timeout.
#[derive(Debug, thiserror::Error)]
#[error("upstream attempt timed out after {}", humantime::format_duration(*.0))]
pub struct UpstreamTimeout(pub Duration);

/// The request's overall deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("request deadline of {} exceeded", humantime::format_duration(*.0))]
pub struct DeadlineExceeded(pub Duration);

/// The breaker is open: the request was not sent.
#[derive(Debug, thiserror::Error)]
#[error("circuit breaker is open; upstream not tried")]
pub struct CircuitOpen {
    /// Time until the breaker lets probes through.
    pub retry_after: Duration,
}

/// The request body is larger than the configured limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit, in bytes.
    pub limit: u64,
}

/// The request body could not be read from the client.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body from the client failed: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

/// The body of a GraphQL route is not a GraphQL request.
#[derive(Debug, thiserror::Error)]
#[error("invalid GraphQL request: {0}")]
pub struct InvalidGraphql(pub String);

/// A GraphQL request over one of the `[limits]` counts: refused before
/// anything else reads it, so no per-request work grows without bound.
#[derive(Debug, thiserror::Error)]
#[error("the request has {found} {what}, more than {key} ({limit})")]
pub struct LimitExceeded {
    /// Which limit (`TooManyRootFields`, `TooManyVariables`): its answer
    /// and code are the kind's (see [`crate::failure`]).
    pub kind: crate::failure::Kind,
    /// What was counted.
    pub what: &'static str,
    /// The config key that sets the limit.
    pub key: &'static str,
    /// The limit.
    pub limit: usize,
    /// What the request has.
    pub found: usize,
}

/// The client asked the sidecar to tunnel (`CONNECT`): it is not a proxy
/// for arbitrary destinations.
#[derive(Debug, thiserror::Error)]
#[error("method {0} is not allowed: the sidecar forwards to its one upstream only")]
pub struct MethodNotAllowed(pub http::Method);

/// An HTTP/1 request without exactly one valid `Host` header (RFC 9112
/// §3.2): it is refused, never forwarded.
#[derive(Debug, thiserror::Error)]
#[error("invalid Host header: {0}")]
pub struct InvalidHost(pub &'static str);

/// The spool is at capacity and refused a write.
#[derive(Debug, thiserror::Error)]
#[error("spool is full ({0}); write not accepted")]
pub struct SpoolFull(pub String);

/// The spool could not commit a write (disk full, I/O error, worker gone).
#[derive(Debug, thiserror::Error)]
#[error("spool commit failed: {0}")]
pub struct SpoolUnavailable(pub String);

/// The response body from the upstream broke off after the head arrived.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body failed: {0}")]
pub struct UpstreamBodyError(#[source] pub hyper::Error);

/// Why no connection to the upstream could be opened: DNS, TCP, TLS or the
/// HTTP/2 handshake failed. Nothing of the request was sent.
#[derive(Debug, thiserror::Error)]
#[error("connect: {0}")]
pub struct ConnectError(#[source] pub Error);

/// The upstream's response body is larger than we can hold for replay or
/// classification.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent an invalid response: {0}")]
pub struct BadUpstreamResponse(pub String);

/// A configuration value a runtime parameter type refused, naming the key
/// (`routes[2].retry.max_attempts`) and the reason. Raised by the
/// constructors that turn file values into parameters, so the check lives
/// with the type that needs it; [`crate::config`] reports it as a config
/// error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct InvalidParam {
    /// Dotted path of the key.
    pub key: String,
    /// Why the value was refused.
    pub message: String,
}

impl InvalidParam {
    /// `key` is refused because `message`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidParam {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Whether `err` or anything in its source chain is an `E`.
pub fn is_caused_by<E: std::error::Error + 'static>(
    err: &(dyn std::error::Error + 'static),
) -> bool {
    cause_ref::<E>(err).is_some()
}

/// The first `E` in `err`'s source chain, `err` included.
pub fn cause_ref<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        // `io::Error` hides a custom payload behind `get_ref`, not `source`.
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            if let Some(found) = inner.downcast_ref::<E>() {
                return Some(found);
            }
            if let Some(found) = cause_ref::<E>(inner) {
                return Some(found);
            }
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_leaf_through_io_error() {
        let leaf = BodyTooLarge { limit: 3 };
        let io = std::io::Error::other(leaf);
        let boxed: Error = Box::new(io);
        assert!(is_caused_by::<BodyTooLarge>(boxed.as_ref()));
        assert!(!is_caused_by::<CircuitOpen>(boxed.as_ref()));
    }
}
