//! The layer that classifies every attempt and tells the breaker, the
//! exchange and the metrics. It sits right above the per-try timeout so a
//! timed-out attempt is classified like any other.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::aliases::AttemptAliases;
use super::{Class, Classified, Classifier, Kind, Verdict};
use crate::body::ResponseBody;
use crate::breaker::Breaker;
use crate::error::Error;
use crate::exchange::{self, Exchange};
use crate::metrics::RouteMetrics;

/// Adds [`Classify`] to a stack.
#[derive(Debug, Clone)]
pub struct ClassifyLayer {
    // One reference count for all three: the layer is cloned into every
    // attempt's future and with every per-request clone of the stack.
    shared: Arc<ClassifyShared>,
}

#[derive(Debug)]
struct ClassifyShared {
    classifier: Arc<Classifier>,
    breaker: Option<Breaker>,
    metrics: Arc<RouteMetrics>,
}

impl ClassifyLayer {
    /// Classify with `classifier`, reporting to the route's `breaker`
    /// (`None` when the route does not go through it) and its `metrics`.
    pub fn new(
        classifier: Arc<Classifier>,
        breaker: Option<Breaker>,
        metrics: Arc<RouteMetrics>,
    ) -> Self {
        ClassifyLayer {
            shared: Arc::new(ClassifyShared {
                classifier,
                breaker,
                metrics,
            }),
        }
    }
}

impl<S> Layer<S> for ClassifyLayer {
    type Service = Classify<S>;
    fn layer(&self, inner: S) -> Classify<S> {
        Classify {
            inner,
            layer: self.clone(),
        }
    }
}

/// Classifies each attempt's outcome.
#[derive(Debug, Clone)]
pub struct Classify<S> {
    inner: S,
    layer: ClassifyLayer,
}

// === impl Classify ===

impl<S, B> Service<Request<B>> for Classify<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody>, Error = Error>,
{
    type Response = Response<ResponseBody>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ex = exchange::of(&req).cloned();
        if let Some(ex) = &ex {
            ex.start_attempt();
        }
        let subset = req.extensions().get::<AttemptAliases>().cloned();
        ResponseFuture {
            inner: self.inner.call(req),
            ex,
            subset,
            started: Instant::now(),
            layer: self.layer.clone(),
        }
    }
}

pin_project! {
    /// Response future of [`Classify`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        ex: Option<Arc<Exchange>>,
        // The aliases a rewritten attempt carries.
        subset: Option<AttemptAliases>,
        started: Instant,
        layer: ClassifyLayer,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, Error>>,
{
    type Output = Result<Response<ResponseBody>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let layer = &*this.layer.shared;
        let routed = this.ex.as_ref().and_then(|e| e.routed());
        let (class, out) = match result {
            Ok(mut resp) => {
                let mut class = layer.classifier.status(resp.status(), resp.headers());
                let op = routed.and_then(|r| r.operation.as_deref());
                if let (true, Some(op)) = (class == Class::OK, op) {
                    class = match resp.body().bytes() {
                        Some(bytes) => {
                            let (class, aliases) = match this.subset.as_ref() {
                                Some(s) => layer.classifier.graphql_attempt(bytes, &s.0),
                                None => layer.classifier.graphql_answer(bytes, op),
                            };
                            if let Some(a) = aliases {
                                resp.extensions_mut().insert(a);
                            }
                            class
                        }
                        None => {
                            tracing::warn!(
                                request_id = ?this.ex.as_ref().map(|e| &e.request_id),
                                "GraphQL response larger than classify.max_graphql_response; passed through unclassified"
                            );
                            Class {
                                kind: Kind::Unclassified,
                                ..Class::OK
                            }
                        }
                    };
                }
                resp.extensions_mut().insert(class);
                (class, Ok(resp))
            }
            Err(source) => {
                let class = Class::of_error(&source);
                let attempts = this.ex.as_ref().map_or(1, |e| e.attempts());
                (
                    class,
                    Err(Box::new(Classified {
                        class,
                        attempts,
                        source,
                    }) as Error),
                )
            }
        };
        let answered = out.is_ok().then(|| this.started.elapsed());
        if let Some(ex) = this.ex.as_ref() {
            ex.record_attempt(class, answered);
        }
        if let Some(breaker) = &layer.breaker
            && class.kind != Kind::CircuitOpen
        {
            breaker.record(&class);
        }
        layer.metrics.attempt(&class);
        if class.verdict != Verdict::Success {
            tracing::debug!(
                kind = class.kind.as_str(),
                class = class.verdict.as_str(),
                "attempt failed"
            );
        }
        Poll::Ready(out)
    }
}
