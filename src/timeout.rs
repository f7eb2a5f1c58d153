//! Two timeouts: the per-try timeout around one attempt, and the deadline
//! around all attempts of a request.
//!
//! Both fail with a typed error ([`UpstreamTimeout`], [`DeadlineExceeded`])
//! that [`crate::respond`] turns into a 504 with a structured body; a
//! timeout never shows up to the client as a dropped connection. The per-try
//! timeout is clamped to the time left before the deadline, so no attempt
//! outlives the request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::error::{DeadlineExceeded, Error, UpstreamTimeout};
use crate::exchange;

/// Which timeout a [`Timeout`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One attempt: the route's `per_try`, clamped to the deadline.
    PerTry,
    /// The whole request: the route's deadline.
    Deadline,
}

/// Adds a [`Timeout`] to a stack. Built per route, holding the route's
/// durations; the instant the request's deadline falls on was fixed when
/// it was routed and travels with it.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    scope: Scope,
    per_try: Duration,
    deadline: Duration,
}

impl TimeoutLayer {
    /// Per-attempt timeout of `per_try`, on a route whose deadline is
    /// `deadline` (what an attempt cut short by the deadline reports).
    pub fn per_try(per_try: Duration, deadline: Duration) -> Self {
        TimeoutLayer {
            scope: Scope::PerTry,
            per_try,
            deadline,
        }
    }

    /// The overall deadline of a route whose deadline is `deadline`.
    pub fn deadline(deadline: Duration) -> Self {
        TimeoutLayer {
            scope: Scope::Deadline,
            per_try: deadline,
            deadline,
        }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            params: *self,
        }
    }
}

/// Fails a request that takes too long.
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    params: TimeoutLayer,
}

// === impl Timeout ===

impl<S, B> Service<Request<B>> for Timeout<S>
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
        let p = self.params;
        let deadline = exchange::of(&req)
            .and_then(|e| e.routed())
            .map(|r| r.deadline);
        let (until, scope, label) = match (deadline, p.scope) {
            (Some(at), Scope::PerTry) => {
                let own = crate::clock::after(Instant::now(), p.per_try);
                // An attempt cut short by the deadline ran out of the
                // request's time, not its own: say so.
                if own > at {
                    (at, Scope::Deadline, p.deadline)
                } else {
                    (own, Scope::PerTry, p.per_try)
                }
            }
            (Some(at), Scope::Deadline) => (at, Scope::Deadline, p.deadline),
            // Prepare routes every request before it gets here; one that
            // was not has no deadline to keep, so it is not sent at all.
            (None, scope) => {
                return ResponseFuture {
                    inner: None,
                    sleep: tokio::time::sleep_until(Instant::now()),
                    scope,
                    label: Duration::ZERO,
                };
            }
        };
        ResponseFuture {
            inner: Some(self.inner.call(req)),
            sleep: tokio::time::sleep_until(until),
            scope,
            label,
        }
    }
}

pin_project! {
    /// Response future of [`Timeout`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        // `None` for a request that was never routed.
        #[pin]
        inner: Option<F>,
        #[pin]
        sleep: Sleep,
        scope: Scope,
        label: Duration,
    }
}

impl<F, T> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, Error>>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(
                "internal: a request reached the timeout layer unrouted".into(),
            ));
        };
        if let Poll::Ready(out) = inner.poll(cx) {
            return Poll::Ready(out);
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(match this.scope {
                Scope::PerTry => Box::new(UpstreamTimeout(*this.label)) as Error,
                Scope::Deadline => Box::new(DeadlineExceeded(*this.label)),
            })),
            Poll::Pending => Poll::Pending,
        }
    }
}
