//! The layer that asks the breaker before a request goes on.
//!
//! It sits outside retry, so one admission covers all of a request's
//! attempts (a probe request keeps its probe slot through its retries), and
//! the retry policy separately refuses to retry while the breaker is open.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Request;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{Admission, Breaker, ProbePermit};
use crate::error::{CircuitOpen, Error};
use crate::exchange::{self, NotRetried};

/// Adds [`BreakerGate`] to a stack.
#[derive(Debug, Clone)]
pub struct BreakerGateLayer {
    breaker: Option<Breaker>,
}

impl BreakerGateLayer {
    /// Gate requests through `breaker`; `None` for a route that does not go
    /// through the breaker (`breaker = false`).
    pub fn new(breaker: Option<Breaker>) -> Self {
        BreakerGateLayer { breaker }
    }
}

impl<S> Layer<S> for BreakerGateLayer {
    type Service = BreakerGate<S>;
    fn layer(&self, inner: S) -> BreakerGate<S> {
        BreakerGate {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

/// Fails fast while the breaker is open; admits probes while it is probing.
#[derive(Debug, Clone)]
pub struct BreakerGate<S> {
    inner: S,
    breaker: Option<Breaker>,
}

// === impl BreakerGate ===

impl<S> BreakerGate<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B> Service<Request<B>> for BreakerGate<S>
where
    S: Service<Request<B>, Error = Error>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ex = exchange::of(&req);
        let permit = if let Some(breaker) = &self.breaker {
            match breaker.admit() {
                Admission::Allowed => None,
                Admission::Probe(p) => Some(p),
                Admission::Rejected(retry_after) => {
                    if let Some(ex) = ex {
                        ex.set_not_retried(NotRetried::BreakerOpen);
                    }
                    return ResponseFuture {
                        state: State::Rejected {
                            error: Some(CircuitOpen { retry_after }),
                        },
                    };
                }
            }
        } else {
            None
        };
        ResponseFuture {
            state: State::Admitted {
                future: self.inner.call(req),
                permit,
            },
        }
    }
}

pin_project! {
    /// Response future of [`BreakerGate`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Admitted { #[pin] future: F, permit: Option<ProbePermit> },
        Rejected { error: Option<CircuitOpen> },
    }
}

impl<F, T> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, Error>>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Admitted { future, permit } => {
                let out = std::task::ready!(future.poll(cx));
                // The outcome is recorded by the classify layer; only now may
                // another probe take this slot.
                drop(permit.take());
                Poll::Ready(out)
            }
            StateProj::Rejected { error } => match error.take() {
                Some(e) => Poll::Ready(Err(Box::new(e))),
                None => Poll::Ready(Err("breaker gate polled after completion".into())),
            },
        }
    }
}
