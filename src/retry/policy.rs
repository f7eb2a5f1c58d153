//! The retry decision, as a tower [`Policy`].

use std::sync::Arc;

use http::{Request, Response};
use tokio::time::{Instant, Sleep};
use tower::retry::Policy;
use tower::retry::budget::Budget;

use super::RetryBudget;
use super::partial::{self, Partial, Step};
use crate::body::{RequestBody, ResponseBody};
use crate::breaker::{Breaker, State};
use crate::classify::{Class, Verdict};
use crate::error::Error;
use crate::exchange::{self, Exchange, NotRetried, Routed};
use crate::metrics::RouteMetrics;
use crate::route::Route;

/// Decides, after each failed attempt, whether and when to try again.
///
/// The policy in the service is a template: tower clones it for each
/// request, and the clone keeps that request's state.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    // One reference count for both: tower clones the policy for every
    // request.
    shared: Arc<PolicyShared>,
    /// Set on a request's own copy once it has retried, so the request's
    /// deposit into the budget is made exactly once.
    retrying: bool,
    /// A batched write whose aliases are being settled one by one (see
    /// [`partial`]).
    partial: Option<Box<Partial>>,
}

#[derive(Debug)]
struct PolicyShared {
    budget: Arc<RetryBudget>,
    breaker: Option<Breaker>,
    /// The route whose stack this policy is in: its retry parameters and
    /// its writes' ordering keys.
    route: Arc<Route>,
    metrics: Arc<RouteMetrics>,
}

impl RetryPolicy {
    /// The policy of `route`'s stack, sharing `budget` with every other
    /// request and stopping early while `breaker` (the route's, `None` when
    /// it does not go through one) is open. Batched answers are merged
    /// alias by alias from the judgement the classify layer attached to
    /// each attempt.
    pub fn new(
        budget: Arc<RetryBudget>,
        breaker: Option<Breaker>,
        route: Arc<Route>,
        metrics: Arc<RouteMetrics>,
    ) -> Self {
        RetryPolicy {
            shared: Arc::new(PolicyShared {
                budget,
                breaker,
                route,
                metrics,
            }),
            retrying: false,
            partial: None,
        }
    }

    /// A batched write: settle its aliases one by one when its answer is
    /// partial. `None`: judge the request as a whole.
    fn per_alias(
        &mut self,
        req: &mut Request<RequestBody>,
        result: &mut Result<Response<ResponseBody>, Error>,
        class: &Class,
    ) -> Option<Option<Sleep>> {
        // The common case, a success with nothing settled before: nothing
        // to look at.
        if self.partial.is_none() && !class.is_failure() {
            return None;
        }
        let ex = exchange::of(req)?.clone();
        let routed = ex.routed()?;
        let step = match self.partial.as_mut() {
            Some(p) => p.next(result, class),
            None if class.is_failure() && partial::eligible(routed) => {
                let p = Partial::start(&self.shared.route, req, result)?;
                let open = p.open_class();
                self.partial = Some(Box::new(p));
                Step::Retry(open)
            }
            None => Step::Whole,
        };
        let open = match step {
            Step::Whole => return None,
            Step::Done => {
                if let Some(p) = self.partial.take() {
                    p.finish(result, &ex, class);
                }
                return Some(None);
            }
            Step::Retry(open) => open,
        };
        match self.decide(&ex, routed, &open) {
            Ok(delay) => {
                if let Some(p) = &self.partial {
                    p.rewrite(req);
                }
                self.retrying = true;
                self.shared.metrics.retries.inc();
                tracing::debug!(
                    request_id = ?ex.request_id,
                    attempt = ex.attempts(),
                    kind = open.kind.as_str(),
                    delay_ms = delay.as_millis() as u64,
                    "retrying the aliases still open"
                );
                Some(Some(tokio::time::sleep(delay)))
            }
            Err(reason) => {
                ex.set_not_retried(reason);
                if let Some(p) = self.partial.take() {
                    p.finish(result, &ex, class);
                }
                Some(None)
            }
        }
    }

    /// Why not to retry, or how long to wait first.
    fn decide(
        &self,
        ex: &Exchange,
        routed: &Routed,
        class: &Class,
    ) -> Result<std::time::Duration, NotRetried> {
        let route = &self.shared.route;
        let attempts = ex.attempts();
        if let Some(reason) = static_refusal(routed, class, attempts, route.retry.max_attempts) {
            return Err(reason);
        }
        if let Some(breaker) = &self.shared.breaker
            && breaker.state() == State::Open
        {
            return Err(NotRetried::BreakerOpen);
        }
        let mut delay = route.retry.backoff.delay(attempts);
        if let Some(asked) = class.retry_after {
            if asked > route.retry.retry_after_max {
                return Err(NotRetried::RetryAfterTooLong);
            }
            delay = delay.max(asked);
        }
        let earliest_end = delay.saturating_add(route.retry.min_attempt_time);
        if crate::clock::after(Instant::now(), earliest_end) > routed.deadline {
            return Err(NotRetried::Deadline);
        }
        if !self.shared.budget.withdraw() {
            return Err(NotRetried::BudgetExhausted);
        }
        Ok(delay)
    }
}

/// The reasons not to retry that depend only on the request and the
/// failure (not on time, the budget or the breaker). Also used to explain a
/// failure the policy never saw, such as one whose body was not kept.
pub fn static_refusal(
    routed: &Routed,
    class: &Class,
    attempts: u32,
    max_attempts: u32,
) -> Option<NotRetried> {
    if class.verdict == Verdict::Permanent {
        return Some(NotRetried::Permanent);
    }
    if attempts >= max_attempts {
        return Some(NotRetried::MaxAttempts);
    }
    if class.may_have_reached && !routed.idempotent {
        return Some(NotRetried::NotIdempotent);
    }
    if !routed.replayable {
        return Some(NotRetried::BodyOverCap);
    }
    None
}

impl Policy<Request<RequestBody>, Response<ResponseBody>, Error> for RetryPolicy {
    type Future = Sleep;

    fn retry(
        &mut self,
        req: &mut Request<RequestBody>,
        result: &mut Result<Response<ResponseBody>, Error>,
    ) -> Option<Sleep> {
        let class = match result {
            Ok(resp) => resp
                .extensions()
                .get::<Class>()
                .copied()
                .unwrap_or(Class::OK),
            Err(e) => Class::of_error(e),
        };
        if let Some(decided) = self.per_alias(req, result, &class) {
            return decided;
        }
        if !class.is_failure() {
            return None;
        }
        let ex = exchange::of(req)?;
        let routed = ex.routed()?;
        match self.decide(ex, routed, &class) {
            Ok(delay) => {
                self.retrying = true;
                self.shared.metrics.retries.inc();
                tracing::debug!(
                    request_id = ?ex.request_id,
                    attempt = ex.attempts(),
                    kind = class.kind.as_str(),
                    delay_ms = delay.as_millis() as u64,
                    "retrying"
                );
                Some(tokio::time::sleep(delay))
            }
            Err(reason) => {
                ex.set_not_retried(reason);
                None
            }
        }
    }

    fn clone_request(&mut self, req: &Request<RequestBody>) -> Option<Request<RequestBody>> {
        if !self.retrying {
            self.shared.budget.deposit();
        }
        let replayable = exchange::of(req)
            .and_then(|e| e.routed())
            .is_some_and(|r| r.replayable);
        if !replayable {
            return None;
        }
        let body = req.body().try_clone()?;
        let mut copy = Request::new(body);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }
}
