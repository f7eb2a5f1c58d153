//! Turning the client's request into the upstream's, once per request.
//!
//! [`Prepare`] reads the body (bounded; whole for GraphQL and for bodies small
//! enough to replay, streamed otherwise), parses the GraphQL operation when a
//! route needs it, picks the route, records the decision on the exchange, and
//! rewrites the head for the one upstream: the URI is rebuilt from the
//! configured scheme and authority (an absolute-form URI or a foreign `Host`
//! never changes the destination — the sidecar is not an open proxy),
//! hop-by-hop headers are dropped, `Host` is rewritten, `X-Forwarded-*` added.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version, request};
use hyper::body::Incoming;
use tower::{Layer, Service, ServiceExt};

use crate::body::{RequestBody, ResponseBody};
use crate::error::{
    BodyTooLarge, Error, InvalidGraphql, InvalidHost, LimitExceeded, MethodNotAllowed,
};
use crate::exchange::{self, Routed};
use crate::graphql;
use crate::metrics::{Metrics, RouteMetrics};
use crate::proxy::UpstreamTarget;
use crate::route::{ErrorFormat, Route, Routes};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// and the two handled with them: `TE` (kept as `TE: trailers` so trailers
/// can flow) and `Proxy-Authenticate`.
fn hop_by_hop() -> [&'static HeaderName; 8] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHORIZATION,
        &header::PROXY_AUTHENTICATE,
        &header::TE,
    ]
}

/// The hop-by-hop name `name` is, if it is one.
fn as_hop(name: &HeaderName) -> Option<&'static HeaderName> {
    hop_by_hop().into_iter().find(|h| *h == name)
}

/// Remove hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (standard ones compare as integers) finds the
    // few present; only those are looked up again to be removed. Nearly
    // every message carries `Connection: keep-alive` and nothing else.
    let mut present: [Option<&'static HeaderName>; 8] = [None; 8];
    let mut n = 0;
    let mut te = false;
    for name in headers.keys() {
        match as_hop(name) {
            Some(hop) if hop == header::TE => te = true,
            Some(hop) => {
                present[n] = Some(hop);
                n += 1;
            }
            None => {}
        }
    }
    if n == 0 && !te {
        return;
    }
    if let Some(conn) = headers.get(header::CONNECTION) {
        let named: Vec<HeaderName> = conn
            .to_str()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            // The usual tokens name no header (`close`) or one removed
            // below anyway (`keep-alive`): no name to build for them.
            .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            // Never let `Connection` strip what the proxy must keep.
            if name != header::HOST && name != header::CONTENT_LENGTH {
                headers.remove(name);
            }
        }
    }
    for hop in present[..n].iter().flatten() {
        headers.remove(*hop);
    }
    if te {
        let trailers_only = headers
            .get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
        headers.remove(header::TE);
        if trailers_only {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}

/// The upstream, ready to rewrite request heads.
#[derive(Debug)]
pub struct Target {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    base_path: String,
    host: HeaderValue,
}

impl Target {
    /// From the validated upstream settings.
    pub fn new(t: &UpstreamTarget) -> Result<Self, Error> {
        Ok(Target {
            scheme: t.scheme.clone(),
            authority: t.authority.clone(),
            base_path: t.base_path.clone(),
            host: HeaderValue::from_str(t.authority.as_str())?,
        })
    }

    /// The URI of `incoming`'s path and query on the upstream.
    fn uri(&self, incoming: &Uri) -> Result<Uri, Error> {
        match incoming.path_and_query() {
            // No prefix to add: reuse the request's path without a copy.
            Some(pq) if self.base_path.is_empty() => Ok(Uri::builder()
                .scheme(self.scheme.clone())
                .authority(self.authority.clone())
                .path_and_query(pq.clone())
                .build()?),
            other => self.uri_for(other.map_or("/", |p| p.as_str())),
        }
    }

    /// `scheme://authority/base`, for display.
    pub fn origin(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.base_path)
    }

    /// The `Host` header sent upstream.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// The upstream URI for a path and query.
    pub fn uri_for(&self, pq: &str) -> Result<Uri, Error> {
        let mut b = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        b = if self.base_path.is_empty() {
            b.path_and_query(pq)
        } else {
            b.path_and_query(format!("{}{}", self.base_path, pq))
        };
        Ok(b.build()?)
    }

    /// Rewrite a request head for the upstream.
    pub fn rewrite(
        &self,
        parts: &mut request::Parts,
        client: Option<&HeaderValue>,
    ) -> Result<(), Error> {
        let original_host = parts.headers.remove(header::HOST).or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        parts.uri = self.uri(&parts.uri)?;
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(header::HOST, self.host.clone());
        if let Some(ip) = client {
            let value = match parts.headers.get(&X_FORWARDED_FOR) {
                Some(prev) => {
                    let mut v = prev.as_bytes().to_vec();
                    v.extend_from_slice(b", ");
                    v.extend_from_slice(ip.as_bytes());
                    HeaderValue::from_bytes(&v).unwrap_or_else(|_| ip.clone())
                }
                None => ip.clone(),
            };
            parts.headers.insert(&X_FORWARDED_FOR, value);
        }
        parts
            .headers
            .insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        if let Some(host) = original_host {
            parts.headers.insert(&X_FORWARDED_HOST, host);
        }
        Ok(())
    }
}

/// Request-size limits (`[limits]`), in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body forwarded.
    pub max_request_body: u64,
    /// Largest GraphQL request body (read whole to parse).
    pub max_graphql_body: u64,
    /// Most root fields in one GraphQL operation.
    pub max_root_fields: usize,
    /// Most members of a GraphQL request's `variables`.
    pub max_variables: usize,
}

/// Settings [`Prepare`] shares across connections.
#[derive(Debug)]
pub struct PrepareShared {
    /// The route table.
    pub routes: Routes,
    /// The upstream.
    pub target: Target,
    /// `[limits]`.
    pub limits: Limits,
    /// `spool.commit_margin`, kept off a spooling route's deadline.
    pub commit_margin: Duration,
    /// Each route's metric handles, by route index.
    pub route_metrics: Arc<[Arc<RouteMetrics>]>,
}

/// The client's address as an `X-Forwarded-For` value, put in the request's
/// extensions by the connection that received it.
#[derive(Debug, Clone)]
pub struct ClientIp(pub HeaderValue);

impl ClientIp {
    /// For a connection from `peer`.
    pub fn of(peer: SocketAddr) -> Option<Self> {
        HeaderValue::from_str(&peer.ip().to_string())
            .ok()
            .map(ClientIp)
    }
}

impl PrepareShared {
    /// From one generation's route table, upstream, limits and
    /// `spool.commit_margin`.
    pub fn new(
        routes: Routes,
        target: &UpstreamTarget,
        limits: Limits,
        commit_margin: Duration,
        metrics: &Metrics,
    ) -> Result<Self, Error> {
        Ok(PrepareShared {
            route_metrics: metrics.route_table(routes.all()),
            routes,
            target: Target::new(target)?,
            limits,
            commit_margin,
        })
    }
}

/// Adds [`Prepare`] to a stack.
#[derive(Debug, Clone)]
pub struct PrepareLayer {
    shared: Arc<PrepareShared>,
}

impl PrepareLayer {
    /// With one generation's routes and limits.
    pub fn new(shared: Arc<PrepareShared>) -> Self {
        PrepareLayer { shared }
    }
}

impl<S> Layer<S> for PrepareLayer {
    type Service = Prepare<S>;
    fn layer(&self, inner: S) -> Prepare<S> {
        Prepare {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Prepare<S> {
    inner: S,
    shared: Arc<PrepareShared>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send>>;

// === impl Prepare ===

impl<S> Service<Request<Incoming>> for Prepare<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>, Error = Error>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<ResponseBody>;
    type Error = Error;
    type Future = BoxFuture<Response<ResponseBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        // Use the service that was polled ready; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let req = prepare(&shared, req).await?;
            inner.ready().await?.call(req).await
        })
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request must carry exactly one `Host`, and a
/// `Host` must be a valid authority (or empty). HTTP/2 carries `:authority`
/// instead; hyper has already checked it.
fn check_host(parts: &request::Parts) -> Result<(), InvalidHost> {
    if parts.version > Version::HTTP_11 {
        return Ok(());
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if parts.version == Version::HTTP_11 => {
            Err(InvalidHost("an HTTP/1.1 request needs a Host header"))
        }
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(InvalidHost("more than one Host header")),
        (Some(h), None) => {
            if h.is_empty() || http::uri::Authority::try_from(h.as_bytes()).is_ok() {
                Ok(())
            } else {
                Err(InvalidHost("the value is not a host[:port]"))
            }
        }
    }
}

/// Read a GraphQL request whole (bounded), find its operation and, when
/// the matching route spools, the ids it writes.
async fn read_graphql(
    shared: &PrepareShared,
    method: &http::Method,
    path: &str,
    incoming: Incoming,
    content_length: Option<u64>,
) -> Result<
    (
        RequestBody,
        Arc<graphql::Operation>,
        Arc<Route>,
        Box<[String]>,
    ),
    Error,
> {
    let limit = shared.limits.max_graphql_body;
    let body = RequestBody::read(incoming, content_length, limit, limit)
        .await
        .map_err(|e| {
            if crate::error::is_caused_by::<BodyTooLarge>(e.as_ref()) {
                Box::new(BodyTooLarge { limit }) as Error
            } else {
                e
            }
        })?;
    let bytes = body.bytes().ok_or(BodyTooLarge { limit })?;
    let request = graphql::parse_request(bytes).inspect_err(|e: &InvalidGraphql| {
        tracing::debug!(error = %e, "invalid GraphQL request");
    })?;
    check_counts(&shared.limits, &request)?;
    let route = shared
        .routes
        .find(method, path, Some(&request.operation))
        .clone();
    let ids = if route.spools() {
        route.order_keys(&request.operation, &request.root_ids())
    } else {
        Box::default()
    };
    let op = request.operation;
    Ok((body, op, route, ids))
}

/// The `[limits]` on what a GraphQL request may count: before anything
/// reads its fields one by one.
fn check_counts(limits: &Limits, request: &graphql::GraphqlRequest<'_>) -> Result<(), Error> {
    let fields = request.operation.root_fields.len();
    if fields > limits.max_root_fields {
        return Err(Box::new(LimitExceeded {
            kind: crate::failure::Kind::TooManyRootFields,
            what: "root fields",
            key: "limits.max_root_fields",
            limit: limits.max_root_fields,
            found: fields,
        }));
    }
    let variables = request.variable_count();
    if variables > limits.max_variables {
        return Err(Box::new(LimitExceeded {
            kind: crate::failure::Kind::TooManyVariables,
            what: "variables",
            key: "limits.max_variables",
            limit: limits.max_variables,
            found: variables,
        }));
    }
    Ok(())
}

async fn prepare(
    shared: &PrepareShared,
    req: Request<Incoming>,
) -> Result<Request<RequestBody>, Error> {
    let (mut parts, incoming) = req.into_parts();
    if parts.method == http::Method::CONNECT {
        return Err(Box::new(MethodNotAllowed(parts.method)));
    }
    check_host(&parts)?;
    let ex = parts
        .extensions
        .get::<Arc<exchange::Exchange>>()
        .cloned()
        .ok_or("request reached Prepare without an exchange")?;
    let content_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let routes = &shared.routes;
    let path = parts.uri.path();
    let is_graphql = routes.needs_graphql(&parts.method, path);
    let (body, operation, route, keys) = if is_graphql {
        match read_graphql(shared, &parts.method, path, incoming, content_length).await {
            Ok((body, op, route, ids)) => (body, Some(op), route, ids),
            Err(e) => {
                // Refused before routing: still answer in the GraphQL envelope
                // and log under the route the head matches.
                let route = routes.find(&parts.method, path, None).clone();
                ex.set_routed(Routed {
                    deadline: crate::clock::after(ex.started, route.deadline),
                    metrics: shared.route_metrics[route.index].clone(),
                    route,
                    operation: None,
                    idempotent: false,
                    replayable: false,
                    error_format: ErrorFormat::Graphql,
                    body_bytes: content_length,
                    keys: Box::default(),
                });
                return Err(e);
            }
        }
    } else {
        let route = routes.find(&parts.method, path, None).clone();
        let keep = route.retry.max_replay_body;
        let body = RequestBody::read(
            incoming,
            content_length,
            keep,
            shared.limits.max_request_body,
        )
        .await?;
        (body, None, route, Box::default())
    };
    if body.has_trailers() {
        // Trailers need chunked framing; a length header would drop them.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let body_bytes = body.bytes().map(|b| b.len() as u64).or(content_length);
    let replayable = body
        .bytes()
        .is_some_and(|b| b.len() as u64 <= route.retry.max_replay_body);
    let margin = if route.spools() {
        shared.commit_margin
    } else {
        Duration::ZERO
    };
    let deadline = crate::clock::after(ex.started, route.deadline.saturating_sub(margin));
    let error_format = route.error_format_for(operation.as_deref());
    let idempotent = route.is_idempotent(&parts.method, operation.as_deref());
    let client = parts.extensions.remove::<ClientIp>();
    shared
        .target
        .rewrite(&mut parts, client.as_ref().map(|c| &c.0))?;
    ex.set_routed(Routed {
        metrics: shared.route_metrics[route.index].clone(),
        route,
        operation,
        idempotent,
        replayable,
        error_format,
        deadline,
        body_bytes,
        keys,
    });
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        Target::new(&UpstreamTarget::parse(url).unwrap()).unwrap()
    }

    #[test]
    fn rewrite_pins_destination_and_drops_hop_by_hop() {
        let t = target("https://backend.example.com:8443/base");
        let mut req = Request::builder()
            .uri("http://evil.example.net/api/graphql?x=1")
            .header("host", "evil.example.net")
            .header("connection", "keep-alive, x-secret-hop")
            .header("x-secret-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers, deflate")
            .header("transfer-encoding", "chunked")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-api-key", "k")
            .body(())
            .unwrap();
        let ip = HeaderValue::from_static("127.0.0.1");
        let (mut parts, _) = req.into_parts();
        t.rewrite(&mut parts, Some(&ip)).unwrap();
        req = Request::from_parts(parts, ());
        assert_eq!(
            req.uri().to_string(),
            "https://backend.example.com:8443/base/api/graphql?x=1"
        );
        let h = req.headers();
        assert_eq!(h["host"], "backend.example.com:8443");
        assert_eq!(h["x-forwarded-host"], "evil.example.net");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-api-key"], "k");
        for gone in [
            "connection",
            "x-secret-hop",
            "keep-alive",
            "transfer-encoding",
        ] {
            assert!(!h.contains_key(gone), "{gone} was kept");
        }
    }

    #[test]
    fn strip_hop_by_hop_removes_exactly_the_connection_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            (
                "connection",
                "Keep-Alive, close, Host, content-length, X-Hop",
            ),
            ("x-hop", "1"),
            ("host", "h"),
            ("content-length", "3"),
            ("te", "deflate"),
            ("proxy-authenticate", "Basic"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        // `TE` without `trailers` goes; `Connection` never strips Host or
        // Content-Length.
        assert_eq!(left, ["content-length", "host", "x-kept"]);

        // The common message: only `Connection: keep-alive` goes.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }
}
