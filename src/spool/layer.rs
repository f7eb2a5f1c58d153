//! The spool's place in the stack: spooling-route writes go live or behind
//! the queue (see [`super::admission`]), and are committed and answered
//! from the spool when they cannot be delivered now.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};

use super::batch::partly_spooled;
use super::{Admit, Reservation, Resolved, Spool, record};
use crate::body::{RequestBody, ResponseBody};
use crate::classify::aliases::AliasAnswers;
use crate::classify::{Class, Verdict};
use crate::error::Error;
use crate::exchange;
use crate::graphql::Operation;
use crate::route::{Route, SpoolMode, hold_behind};

/// Adds [`SpoolService`] to a route's stack.
#[derive(Debug, Clone)]
pub struct SpoolLayer {
    spool: Option<Spool>,
    route: Arc<Route>,
}

impl SpoolLayer {
    /// The spool layer of `route`'s stack: a pass-through unless the route
    /// spools and there is a spool.
    pub fn new(spool: Option<Spool>, route: Arc<Route>) -> Self {
        let spool = spool.filter(|_| route.spools());
        SpoolLayer { spool, route }
    }
}

impl<S> Layer<S> for SpoolLayer {
    type Service = SpoolService<S>;
    fn layer(&self, inner: S) -> SpoolService<S> {
        SpoolService {
            inner,
            spool: self.spool.clone(),
            route: self.route.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct SpoolService<S> {
    inner: S,
    spool: Option<Spool>,
    route: Arc<Route>,
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
        // A write with no order keys names no usable id: not spooled (see
        // `Route::order_keys`).
        let spool = match &self.spool {
            Some(s)
                if exchange::of(&req)
                    .and_then(|e| e.routed())
                    .is_some_and(|r| r.operation.is_some() && !r.keys.is_empty()) =>
            {
                s.clone()
            }
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
                future: Box::pin(spool_call(spool, self.route.clone(), inner, req)),
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
    route: Arc<Route>,
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
        let write = Pending {
            spool: &spool,
            ex: &ex,
            head: spool.head_of(&req, &ex.request_id),
            route: &route,
            op: &op,
            body: &body,
            keys: &routed.keys,
        };
        match admit(&spool, &route, routed, &op, body.len() as u64).await {
            Resolved::Behind(place) => {
                write.store(None, place).await?;
                Ok(record::spooled_response(&op, &body))
            }
            Resolved::Live(guard) => {
                let result = inner.ready().await?.call(req).await;
                match settle_live(&write, &result) {
                    Settled::Answered => {
                        guard.answered();
                        result
                    }
                    Settled::Open { open, paused_by } => {
                        // Store the aliases still open, answer the rest as
                        // the backend did.
                        write.store(Some(&open), guard.into_reservation()).await?;
                        tracing::debug!(
                            request_id = ?ex.request_id,
                            aliases = open.len(),
                            "aliases spooled after a partial answer"
                        );
                        pause(&spool, paused_by, &result);
                        Ok(partly_spooled(result?, &op, &body, &open))
                    }
                    Settled::Whole { paused_by } => {
                        // Spooled at its own (earlier) ticket: anything that
                        // touched the same keys meanwhile went behind it,
                        // and stays behind it.
                        write.store(None, guard.into_reservation()).await?;
                        tracing::debug!(
                            request_id = ?ex.request_id,
                            "write spooled after a failure it may outlast"
                        );
                        pause(&spool, paused_by, &result);
                        Ok(record::spooled_response(&op, &body))
                    }
                }
            }
        }
    }
}

/// A spooling-route write, with everything storing it needs.
struct Pending<'a> {
    spool: &'a Spool,
    ex: &'a exchange::Exchange,
    head: super::batch::Head,
    route: &'a Route,
    op: &'a Operation,
    body: &'a bytes::Bytes,
    keys: &'a [String],
}

impl Pending<'_> {
    /// Commit the write (only the aliases at `only`, when given) at `place`.
    async fn store(&self, only: Option<&[usize]>, place: Reservation) -> Result<(), Error> {
        let writes = self
            .spool
            .writes_of(&self.head, self.route, self.op, self.body, self.keys, only);
        // Boxed: the enqueue state would otherwise widen every live write's
        // future, and that future is moved on each call.
        Box::pin(self.spool.enqueue_many(writes, place)).await?;
        self.ex.set_spooled();
        Ok(())
    }
}

/// Take a place for the write: send it now, or store it behind a write of
/// the same key.
async fn admit(
    spool: &Spool,
    route: &Route,
    routed: &exchange::Routed,
    op: &Operation,
    bytes: u64,
) -> Resolved {
    // A write of n aliases may become n entries: it takes n tickets.
    let tickets = op.root_fields.len() as u64;
    let write_behind = route.mode == SpoolMode::WriteBehind;
    match spool.admit_n(&routed.keys, bytes, write_behind, tickets) {
        Admit::Live(guard) => Resolved::Live(guard),
        Admit::Behind(place) => Resolved::Behind(place),
        // Behind a write of the same key still in flight: wait for it in
        // memory, as long as one attempt still fits in the deadline.
        Admit::Wait(waiting) => {
            let until = routed
                .deadline
                .checked_sub(route.per_try)
                .unwrap_or(routed.deadline);
            Box::pin(waiting.resolve(until)).await
        }
    }
}

/// What a live attempt's outcome leaves for the spool.
enum Settled {
    /// The app sees the backend's answer; nothing is stored.
    Answered,
    /// A batched write answered in part: the aliases at `open` are stored.
    Open {
        open: Vec<usize>,
        paused_by: Option<String>,
    },
    /// The whole write is stored.
    Whole { paused_by: Option<String> },
}

/// Decide, as the replay worker decides, what of a live write to store: a
/// transient failure is stored; a refusal of everything (a rotated key, a
/// certificate the roots reject) is stored too and pauses the queue; a
/// refusal of this write's content is the app's to see. A batched write
/// answered alias by alias is settled alias by alias.
fn settle_live(write: &Pending<'_>, result: &Result<Response<ResponseBody>, Error>) -> Settled {
    let answers = result
        .as_ref()
        .ok()
        .and_then(|r| r.extensions().get::<AliasAnswers>());
    if let Some(answers) = answers {
        let Some((open, paused_by)) =
            open_aliases(write.spool, answers, write.route, write.op, write.body)
        else {
            return Settled::Answered;
        };
        return if open.len() < write.op.root_fields.len() {
            Settled::Open { open, paused_by }
        } else {
            Settled::Whole { paused_by }
        };
    }
    let class = match result {
        Ok(r) => r.extensions().get::<Class>().copied().unwrap_or(Class::OK),
        Err(e) => Class::of_error(e),
    };
    match class.verdict {
        Verdict::Success => Settled::Answered,
        Verdict::Transient => Settled::Whole { paused_by: None },
        Verdict::Permanent => match write.spool.system_refusal(&class) {
            Some(reason) => Settled::Whole {
                paused_by: Some(reason),
            },
            None => Settled::Answered,
        },
    }
}

/// A live write met a refusal of everything (`reason`): the queue pauses
/// as if the worker had met it.
fn pause(spool: &Spool, reason: Option<String>, result: &Result<Response<ResponseBody>, Error>) {
    if let Some(reason) = reason {
        let detail = match result {
            Ok(r) => format!("backend answered {} to a live write", r.status()),
            Err(e) => e.to_string(),
        };
        spool.pause_for(reason, detail);
    }
}

/// Of a batched write answered alias by alias, the aliases to store, and
/// the pause reason if one of them met a refusal of everything; `None`
/// when nothing is to be stored and the app gets the backend's answer.
///
/// An alias is stored when it failed in a way that may pass (transient),
/// or was refused as a system (a 401 on the retry of it, say: decided by
/// the rule live and replay share), and so is a later version of a step
/// held behind an open earlier one ([`hold_behind`]) — unless the backend
/// refused that version's content, which is never to be applied. A
/// document that cannot be cut into one entry per alias is not stored in
/// part: the app gets the backend's answer.
fn open_aliases(
    spool: &Spool,
    answers: &AliasAnswers,
    route: &Route,
    op: &Operation,
    body: &[u8],
) -> Option<(Vec<usize>, Option<String>)> {
    let mut paused_by = None;
    let mut refused = vec![false; answers.0.len()];
    let mut open: Vec<bool> = answers
        .0
        .iter()
        .enumerate()
        .map(|(i, a)| match a.verdict {
            Verdict::Success => false,
            Verdict::Transient => true,
            Verdict::Permanent => {
                let class = Class {
                    verdict: Verdict::Permanent,
                    kind: a.kind,
                    ..Class::OK
                };
                match spool.system_refusal(&class) {
                    Some(reason) => {
                        paused_by.get_or_insert(reason);
                        true
                    }
                    None => {
                        refused[i] = true;
                        false
                    }
                }
            }
        })
        .collect();
    if !open.contains(&true) {
        return None;
    }
    // The retry policy has held later versions when it settled the batch;
    // it cannot when the body was not kept for a retry.
    let ids = crate::graphql::parse_request(body)
        .map(|r| r.root_ids())
        .unwrap_or_default();
    hold_behind(&mut open, &route.field_keys(op, &ids));
    let open: Vec<usize> = (0..open.len())
        .filter(|&i| open[i] && !refused[i])
        .collect();
    if open.len() < op.root_fields.len() && crate::graphql::split::Batch::parse(body).is_none() {
        return None;
    }
    Some((open, paused_by))
}
