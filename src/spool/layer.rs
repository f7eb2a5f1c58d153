//! The spool's place in the stack: spooling-route writes go live or behind
//! the queue (see [`super::admission`]), and are committed and answered
//! from the spool when they cannot be delivered now.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};

use super::{Admit, Spool, Write, record};
use crate::body::{RequestBody, ResponseBody};
use crate::classify::Class;
use crate::error::Error;
use crate::exchange;
use crate::route::SpoolMode;

impl Spool {
    /// The write as it will be stored, from the parts of its request.
    fn write_of(
        &self,
        head: &Head,
        route: &std::sync::Arc<str>,
        body: Bytes,
        keys: &[String],
    ) -> Write {
        Write {
            route: route.clone(),
            request_id: head.request_id.to_str().unwrap_or("-").to_string(),
            method: head.method.as_str().to_string(),
            path: head
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            headers: record::encode_headers(&head.headers, &self.inner.live.load().skip),
            body,
            keys: keys.to_vec(),
        }
    }
}

/// What a spooled copy of a request needs from its head: cheap clones,
/// encoded for the store only if the write is actually spooled.
struct Head {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    request_id: http::HeaderValue,
}

/// Adds [`SpoolService`] to a stack.
#[derive(Debug, Clone)]
pub struct SpoolLayer {
    spool: Option<Spool>,
}

impl SpoolLayer {
    /// Spool through `spool` (no-op when `None`).
    pub fn new(spool: Option<Spool>) -> Self {
        SpoolLayer { spool }
    }
}

impl<S> Layer<S> for SpoolLayer {
    type Service = SpoolService<S>;
    fn layer(&self, inner: S) -> SpoolService<S> {
        SpoolService {
            inner,
            spool: self.spool.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct SpoolService<S> {
    inner: S,
    spool: Option<Spool>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send>>;

pin_project_lite::pin_project! {
    /// Response future of [`SpoolService`]: the inner future untouched on
    /// routes that do not spool.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        Passthrough { #[pin] future: F },
        Spooling { future: BoxFuture<Response<ResponseBody>> },
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("spool::ResponseFuture")
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, Error>>,
{
    type Output = Result<Response<ResponseBody>, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Passthrough { future } => future.poll(cx),
            StateProj::Spooling { future } => future.as_mut().poll(cx),
        }
    }
}

// === impl SpoolService ===

impl<S> Service<Request<RequestBody>> for SpoolService<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>, Error = Error>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let spools = exchange::of(&req)
            .and_then(|e| e.routed())
            .is_some_and(|r| r.route.spools() && r.operation.is_some());
        let spool = match (&self.spool, spools) {
            (Some(s), true) => s.clone(),
            _ => {
                return ResponseFuture {
                    state: State::Passthrough {
                        future: self.inner.call(req),
                    },
                };
            }
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Spooling {
                future: Box::pin(spool_call(spool, inner, req)),
            },
        }
    }
}

// A plain fn around an `async move` block rather than an `async fn`: an
// async fn keeps its arguments twice in its state (as captures and as
// locals), and this state is built and moved for every spooling-route write.
#[allow(clippy::manual_async_fn)]
fn spool_call<S>(
    spool: Spool,
    mut inner: S,
    req: Request<RequestBody>,
) -> impl Future<Output = Result<Response<ResponseBody>, Error>>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>, Error = Error>,
{
    async move {
        let ex = exchange::of(&req).cloned().ok_or("spool: no exchange")?;
        let routed = ex.routed().ok_or("spool: request not routed")?;
        let op = routed
            .operation
            .clone()
            .ok_or("spool: not a GraphQL request")?;
        let Some(body) = req.body().full_bytes() else {
            // GraphQL bodies are always read whole; nothing to keep otherwise.
            return inner.ready().await?.call(req).await;
        };
        let route = routed.route.clone();
        let head = Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            request_id: ex.request_id.clone(),
        };
        let bytes = body.len() as u64;
        match spool.admit(&routed.keys, bytes, route.mode == SpoolMode::WriteBehind) {
            Admit::Behind(place) => {
                let body_copy = body.clone();
                let write = spool.write_of(&head, &route.name, body, &routed.keys);
                // Boxed: the enqueue state would otherwise widen every live
                // write's future, and that future is moved on each call.
                Box::pin(spool.enqueue(write, place)).await?;
                ex.set_spooled();
                Ok(record::spooled_response(&op, &body_copy))
            }
            Admit::Live(guard) => {
                let result = inner.ready().await?.call(req).await;
                let class = match &result {
                    Ok(r) => r.extensions().get::<Class>().copied().unwrap_or(Class::OK),
                    Err(e) => Class::of_error(e),
                };
                if !class.is_transient() {
                    return result;
                }
                // Spooled at its own (earlier) ticket: anything that touched the
                // same keys meanwhile went behind it, and stays behind it.
                let place = guard.into_reservation();
                let body_copy = body.clone();
                let write = spool.write_of(&head, &route.name, body, &routed.keys);
                Box::pin(spool.enqueue(write, place)).await?;
                ex.set_spooled();
                tracing::debug!(
                    request_id = ?ex.request_id,
                    kind = class.kind.as_str(),
                    "write spooled after a transient failure"
                );
                Ok(record::spooled_response(&op, &body_copy))
            }
        }
    }
}
