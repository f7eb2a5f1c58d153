//! One stack per route, and the service that hands each request to its
//! route's.
//!
//! Every route of a config generation gets its own delivery stack when the
//! generation is built, its layers holding that route's deadline, per-try
//! timeout, retry parameters, breaker and metrics (as linkerd builds a
//! stack per route target). What a request carries down is what was
//! observed about it — its route's index, deadline instant, operation,
//! attempts — never settings to look up on the way.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::Request;
use tower::Service;
use tower::util::Oneshot;

use crate::error::Error;
use crate::exchange;

/// Hands each request to the stack of the route it was given when it was
/// prepared.
#[derive(Debug)]
pub struct PerRoute<S> {
    // By route index; shared, because the whole stack is cloned for every
    // request.
    stacks: Arc<[S]>,
}

impl<S> Clone for PerRoute<S> {
    fn clone(&self) -> Self {
        PerRoute {
            stacks: self.stacks.clone(),
        }
    }
}

impl<S> PerRoute<S> {
    /// The stacks of a route table, in table order (a route's index is
    /// its stack's).
    pub fn new(stacks: impl IntoIterator<Item = S>) -> Self {
        PerRoute {
            stacks: stacks.into_iter().collect(),
        }
    }

    /// The stack of the route with this index.
    pub fn get(&self, index: usize) -> Option<&S> {
        self.stacks.get(index)
    }
}

impl<S, B> Service<Request<B>> for PerRoute<S>
where
    S: Service<Request<B>, Error = Error> + Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = Either<
        Either<S::Future, Oneshot<S, Request<B>>>,
        std::future::Ready<Result<S::Response, Error>>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Readiness is the chosen stack's, awaited in the call's future:
        // which stack is not known until the request is seen.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let stack = exchange::of(&req)
            .and_then(|e| e.routed())
            .and_then(|r| self.stacks.get(r.route.index));
        let Some(stack) = stack else {
            // Prepare routes every request before it gets here; one that
            // was not is not sent anywhere.
            return Either::Right(std::future::ready(Err(
                "internal: a request reached the route stacks unrouted".into(),
            )));
        };
        let mut stack = stack.clone();
        // A route's stack is ready at once (its slot is taken in the
        // response future, not in poll_ready): call it now, so the future
        // holds neither the clone nor a readiness state. One that is not
        // ready is awaited properly, woken by its own waker.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match stack.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Either::Left(Either::Left(stack.call(req))),
            Poll::Ready(Err(e)) => Either::Right(std::future::ready(Err(e))),
            Poll::Pending => Either::Left(Either::Right(Oneshot::new(stack, req))),
        }
    }
}
