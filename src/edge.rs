//! The outermost of the sidecar's own layers: it opens the per-request
//! [`Exchange`], turns any error from below into a structured response (via
//! [`crate::respond`], so the client never sees a dropped connection), adds
//! `x-sidecar-attempts`, and — when the response body has been fully sent or
//! abandoned — writes the access line and the request metrics.
//!
//! Logging at the end of the body rather than at the response head is what
//! lets the line carry the bytes sent and the total latency of a streamed
//! response.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::board::{ErrorEntry, StatusBoard};
use crate::body::ResponseBody;
use crate::breaker::Breaker;
use crate::classify::{Class, Kind, Verdict};
use crate::error::Error;
use crate::exchange::{Exchange, NotRetried};
use crate::metrics::Metrics;
use crate::respond;
use crate::retry::policy;

/// `x-request-id`: taken from the client or generated, sent upstream and back.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-sidecar-attempts`: how many upstream attempts the answer took.
pub static X_SIDECAR_ATTEMPTS: HeaderName = HeaderName::from_static("x-sidecar-attempts");

/// Shared settings of the edge.
#[derive(Debug)]
pub struct EdgeShared {
    /// Where request metrics go.
    pub metrics: Arc<Metrics>,
    /// The breaker, for its state in the access line.
    pub breaker: Breaker,
    /// Whether to write access lines.
    pub access_log: bool,
    /// Outcomes and recent errors for the status page.
    pub board: Arc<StatusBoard>,
}

/// Adds [`Edge`] to a stack.
#[derive(Debug, Clone)]
pub struct EdgeLayer {
    shared: Arc<EdgeShared>,
}

impl EdgeLayer {
    /// An edge reporting to `shared`.
    pub fn new(shared: Arc<EdgeShared>) -> Self {
        EdgeLayer { shared }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;
    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Edge<S> {
    inner: S,
    shared: Arc<EdgeShared>,
}

// === impl Edge ===

impl<S, B> Service<Request<B>> for Edge<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody>, Error = Error>,
{
    type Response = Response<AccessBody>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = req
            .headers()
            .get(&X_REQUEST_ID)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("-"));
        let ex = Exchange::new(id);
        req.extensions_mut().insert(ex.clone());
        let record = AccessRecord {
            ex,
            method: req.method().clone(),
            uri: req.uri().clone(),
            status: 0,
            class: Class::OK,
            error_code: None,
            shared: self.shared.clone(),
        };
        ResponseFuture {
            inner: self.inner.call(req),
            record: Some(record),
        }
    }
}

pin_project! {
    /// Response future of [`Edge`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        record: Option<AccessRecord>,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, Error>>,
{
    type Output = Result<Response<AccessBody>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(mut record) = this.record.take() else {
            return Poll::Ready(Err("edge polled after completion".into()));
        };
        let ex = &record.ex;
        let resp = match result {
            Ok(resp) => {
                let (resp, code) = respond::rescue_response(resp, ex);
                record.error_code = code;
                record.class = resp
                    .extensions()
                    .get::<Class>()
                    .copied()
                    .or_else(|| ex.last_class())
                    .unwrap_or(Class::OK);
                resp
            }
            Err(err) => {
                let (resp, failure) = respond::error_response(&err, ex);
                record.class = Class::of_error(&err);
                record.error_code = Some(failure.code);
                if failure.status.is_server_error() && failure.code == "internal_error" {
                    tracing::warn!(request_id = ?ex.request_id, error = %err, "request failed");
                }
                resp
            }
        };
        let (mut parts, body) = resp.into_parts();
        let attempts = ex.attempts();
        if attempts > 0 {
            parts
                .headers
                .insert(&X_SIDECAR_ATTEMPTS, HeaderValue::from(attempts));
        }
        record.status = parts.status.as_u16();
        let end = body.is_end_stream();
        let mut body = AccessBody {
            inner: body,
            sent: 0,
            record: Some(Box::new(record)),
        };
        if end {
            // Nothing will poll an empty body; account for it now.
            body.finish(true);
        }
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

/// What the access line and metrics need when the response ends.
#[derive(Debug)]
pub struct AccessRecord {
    ex: Arc<Exchange>,
    method: Method,
    uri: Uri,
    status: u16,
    class: Class,
    error_code: Option<&'static str>,
    shared: Arc<EdgeShared>,
}

/// The response body, counted; logs the request when it ends or is dropped.
#[derive(Debug)]
pub struct AccessBody {
    inner: ResponseBody,
    sent: u64,
    record: Option<Box<AccessRecord>>,
}

impl AccessBody {
    fn finish(&mut self, complete: bool) {
        let Some(r) = self.record.take() else {
            return;
        };
        let ex = &r.ex;
        let routed = ex.routed();
        let total = ex.started.elapsed();
        let mut class = r.class;
        if !complete && class.verdict == Verdict::Success {
            class = Class {
                verdict: Verdict::Transient,
                kind: Kind::ResetMidBody,
                ..class
            };
        }
        let spooled = ex.spooled();
        let not_retried = if class.is_failure() && !spooled {
            ex.not_retried().or_else(|| {
                routed.and_then(|x| {
                    policy::static_refusal(x, &class, ex.attempts(), x.route.retry.max_attempts)
                })
            })
        } else {
            None
        };
        if let Some(routed) = routed {
            let m = &routed.metrics;
            let verdict = if spooled {
                Verdict::Success
            } else {
                class.verdict
            };
            m.request(r.status, verdict, total.as_secs_f64());
            if let Some(reason) = not_retried {
                m.not_retried(reason);
            }
        }
        let board = &r.shared.board;
        if spooled {
            board.spooled();
        } else if class.is_failure() || r.error_code.is_some() {
            board.failed(r.error_code.map(|code| ErrorEntry {
                at_ms: crate::clock::now_ms(),
                code,
                route: routed.map_or_else(|| "-".to_string(), |x| x.route.name.to_string()),
                status: r.status,
            }));
        } else {
            board.answered();
        }
        if !r.shared.access_log {
            return;
        }
        let upstream_ms = ex.upstream_latency().map(|d| d.as_secs_f64() * 1000.0);
        tracing::info!(
            target: "access",
            request_id = ex.request_id.to_str().unwrap_or("-"),
            method = r.method.as_str(),
            path = r.uri.path(),
            route = routed.map_or("-", |x| &*x.route.name),
            graphql_op = routed
                .and_then(|x| x.operation.as_deref())
                .map_or("-", |op| op.display_name()),
            graphql_type = routed
                .and_then(|x| x.operation.as_deref())
                .map_or("-", |op| op.kind.as_str()),
            status = r.status,
            class = class.verdict.as_str(),
            kind = class.kind.as_str(),
            error_code = r.error_code.unwrap_or("-"),
            attempts = ex.attempts(),
            not_retried = not_retried.map_or("-", NotRetried::as_str),
            breaker = r.shared.breaker.state().as_str(),
            spooled,
            upstream_ms,
            total_ms = total.as_secs_f64() * 1000.0,
            request_bytes = routed.and_then(|x| x.body_bytes),
            response_bytes = self.sent,
            complete,
        );
    }
}

impl Body for AccessBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let out = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &out {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
            }
            Some(Err(_)) => this.finish(false),
            None => this.finish(true),
        }
        Poll::Ready(out)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AccessBody {
    fn drop(&mut self) {
        // The client went away (or hyper dropped the body) before the end.
        self.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::config::{Config, Overrides};
    use crate::exchange::Routed;
    use crate::route::{ErrorFormat, Routes};

    /// The fields of the access lines, as their events carry them.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<HashMap<String, String>>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Lines {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if event.metadata().target() == "access" {
                let mut fields = Fields::default();
                event.record(&mut fields);
                self.0.lock().unwrap().push(fields.0);
            }
        }
    }

    #[derive(Default)]
    struct Fields(HashMap<String, String>);

    impl tracing::field::Visit for Fields {
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.insert(field.name().to_string(), value.to_string());
        }
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0
                .insert(field.name().to_string(), format!("{value:?}"));
        }
    }

    /// What the app, the access line and the metrics were told about one
    /// request whose inner service answered `outcome`.
    struct Seen {
        status: u16,
        body: serde_json::Value,
        line: HashMap<String, String>,
        metrics: String,
        board: (u64, u64, u64),
    }

    async fn through_the_edge(outcome: Result<Response<ResponseBody>, Error>) -> Seen {
        let lines = Lines::default();
        let _log =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(lines.clone()));
        let text = "[upstream]\nurl = \"http://127.0.0.1:9\"\n[[routes]]\nname = \"r\"\n";
        let cfg =
            Config::from_toml_str(text, std::path::Path::new("t"), &[], &Overrides::default())
                .unwrap();
        let routes = Routes::new(cfg.routes.clone());
        let metrics = Metrics::new();
        let route_metrics = metrics.route_table(routes.all());
        let shared = Arc::new(EdgeShared {
            metrics: metrics.clone(),
            breaker: Breaker::new(cfg.breaker.clone(), metrics.breaker.clone()),
            access_log: true,
            board: Arc::new(StatusBoard::new(metrics.outcomes.clone())),
        });
        let board = shared.board.clone();
        let route = routes.all()[0].clone();
        let outcome = Mutex::new(Some(outcome));
        // Stands for prepare and the route's stack: routes the request,
        // then fails (or answers) as told.
        let inner = tower::service_fn(move |req: Request<()>| {
            let ex = req.extensions().get::<Arc<Exchange>>().unwrap();
            ex.set_routed(Routed {
                deadline: ex.started + route.deadline,
                metrics: route_metrics[route.index].clone(),
                idempotent: true,
                replayable: true,
                error_format: ErrorFormat::Problem,
                operation: None,
                body_bytes: Some(0),
                keys: Box::default(),
                route: route.clone(),
            });
            std::future::ready(outcome.lock().unwrap().take().unwrap())
        });
        let resp = EdgeLayer::new(shared)
            .layer(inner)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        let line = lines.0.lock().unwrap().pop().expect("one access line");
        Seen {
            status,
            body,
            line,
            metrics: metrics.encode(),
            board: board.totals(),
        }
    }

    /// Every failure the sidecar answers itself, walked through the edge as
    /// a request meets it: the app's answer, the access line and the
    /// request metrics carry the kind's one status, code and class.
    #[tokio::test(flavor = "current_thread")]
    async fn every_failure_is_answered_logged_and_counted_with_one_class_and_kind() {
        let mut cases: Vec<(Result<Response<ResponseBody>, Error>, Kind)> =
            respond::tests::raised_failures()
                .into_iter()
                .map(|(err, kind)| (Err(err), kind))
                .collect();
        // A GraphQL route's 200 that is not JSON, judged so by classify and
        // rescued at the edge.
        let mut not_json = Response::new(ResponseBody::full(Bytes::from_static(b"<html>")));
        not_json
            .extensions_mut()
            .insert(Class::new(Verdict::Transient, Kind::BadJson, true));
        cases.push((Ok(not_json), Kind::BadJson));
        for (outcome, kind) in cases {
            let table = kind.answer();
            let verdict = table.verdict.unwrap();
            let seen = through_the_edge(outcome).await;
            let what = format!("{kind:?}");
            assert_eq!(seen.status, table.status.as_u16(), "{what}");
            assert_eq!(seen.body["code"], table.code, "{what}: {}", seen.body);
            assert_eq!(
                seen.body["class"],
                verdict.as_str(),
                "{what}: {}",
                seen.body
            );
            assert_eq!(seen.line["class"], verdict.as_str(), "{what}");
            assert_eq!(seen.line["kind"], kind.as_str(), "{what}");
            assert_eq!(seen.line["error_code"], table.code, "{what}");
            assert_eq!(
                seen.line["status"],
                table.status.as_u16().to_string(),
                "{what}"
            );
            let status_class = format!("{}xx", table.status.as_u16() / 100);
            let counted = format!(
                "datalayer_sidecar_requests_total{{route=\"r\",status_class=\"{status_class}\",class=\"{}\"}} 1",
                verdict.as_str()
            );
            assert!(seen.metrics.contains(&counted), "{what}: no {counted}");
            // The status board shows the metric's own count.
            let failed = "datalayer_sidecar_outcomes_total{outcome=\"failed\"} 1";
            assert!(seen.metrics.contains(failed), "{what}: no {failed}");
            assert_eq!(seen.board, (0, 0, 1), "{what}: the board");
        }
    }
}
