//! A bound on requests in flight to the upstream, taken inside the deadline.
//!
//! tower's `ConcurrencyLimit` waits for its permit in `poll_ready`, which a
//! caller polls before `call` — before the deadline's timer exists, so a
//! request could wait for a slot far past its deadline (and past the
//! client's own timeout). This layer's `poll_ready` is always ready; the
//! response future first waits for a slot, then drives the inner service,
//! so the wait happens under the deadline layer above it and a request that
//! cannot get a slot in time gets its structured 504 (or is spooled) in
//! time. The slot is held until the response head arrives, through every
//! retry of the request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::error::Error;

/// Adds [`UpstreamSlot`] to a stack.
#[derive(Debug, Clone)]
pub struct UpstreamSlotLayer {
    slots: Arc<Semaphore>,
}

impl UpstreamSlotLayer {
    /// Share `slots` among every request that goes through the layer.
    pub fn new(slots: Arc<Semaphore>) -> Self {
        UpstreamSlotLayer { slots }
    }
}

impl<S> Layer<S> for UpstreamSlotLayer {
    type Service = UpstreamSlot<S>;
    fn layer(&self, inner: S) -> UpstreamSlot<S> {
        UpstreamSlot {
            inner,
            slots: self.slots.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct UpstreamSlot<S> {
    inner: S,
    slots: Arc<Semaphore>,
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

// === impl UpstreamSlot ===

impl<S, R> Service<R> for UpstreamSlot<S>
where
    S: Service<R, Error = Error> + Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S, R>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Readiness is decided per request, in the future, under the deadline.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        // The common case, a free slot, costs no allocation.
        let state = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => State::Ready {
                permit: Some(permit),
            },
            Err(_) => State::Waiting {
                acquire: Box::pin(self.slots.clone().acquire_owned()),
            },
        };
        ResponseFuture {
            state,
            inner: Some(inner),
            req: Some(req),
        }
    }
}

pin_project! {
    /// Response future of [`UpstreamSlot`].
    pub struct ResponseFuture<S: Service<R>, R> {
        #[pin]
        state: State<S::Future>,
        inner: Option<S>,
        req: Option<R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Waiting { acquire: Acquire },
        Ready { permit: Option<OwnedSemaphorePermit> },
        Calling { #[pin] future: F, permit: OwnedSemaphorePermit },
        Done,
    }
}

impl<S: Service<R>, R> std::fmt::Debug for ResponseFuture<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("slot::ResponseFuture")
    }
}

impl<S, R> Future for ResponseFuture<S, R>
where
    S: Service<R, Error = Error>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { acquire } => {
                    let permit = ready!(acquire.as_mut().poll(cx))
                        .map_err(|_| Error::from("upstream slots closed"))?;
                    this.state.set(State::Ready {
                        permit: Some(permit),
                    });
                }
                StateProj::Ready { permit } => {
                    let Some(inner) = this.inner.as_mut() else {
                        return Poll::Ready(Err("slot future polled after completion".into()));
                    };
                    ready!(inner.poll_ready(cx))?;
                    let (Some(req), Some(permit)) = (this.req.take(), permit.take()) else {
                        return Poll::Ready(Err("slot future polled after completion".into()));
                    };
                    let future = inner.call(req);
                    *this.inner = None;
                    this.state.set(State::Calling { future, permit });
                }
                StateProj::Calling { future, .. } => {
                    let out = ready!(future.poll(cx));
                    // Free the slot with the answer, not when the caller
                    // gets round to dropping this future.
                    this.state.set(State::Done);
                    return Poll::Ready(out);
                }
                StateProj::Done => {
                    return Poll::Ready(Err("slot future polled after completion".into()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use tokio_test::{assert_pending, assert_ready_ok, task};
    use tower::ServiceExt;
    use tower_test::mock;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_request_waits_for_a_slot_in_its_future_not_in_poll_ready() {
        let (svc, mut handle) = mock::pair::<&'static str, &'static str>();
        let svc = svc.map_err(Error::from);
        let slots = Arc::new(Semaphore::new(1));
        let mut slot = UpstreamSlotLayer::new(slots.clone()).layer(svc);
        handle.allow(10);

        let mut first = task::spawn(slot.ready().await.unwrap().call("a"));
        assert_pending!(first.poll());
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req, "a");

        // Ready at once although the slot is taken...
        let mut second = task::spawn(slot.ready().await.unwrap().call("b"));
        // ...and the wait is in the future, where a timeout above can end it.
        assert_pending!(second.poll());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_pending!(second.poll());

        // A request that gave up leaves the queue of waiters.
        drop(second);
        send.send_response("A");
        assert_eq!(assert_ready_ok!(first.poll()), "A");
        // The first answer freed the slot: the next request goes through.
        let mut third = task::spawn(slot.ready().await.unwrap().call("c"));
        assert_pending!(third.poll());
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req, "c");
        send.send_response("C");
        assert_eq!(assert_ready_ok!(third.poll()), "C");
        assert_eq!(slots.available_permits(), 1);
    }
}
