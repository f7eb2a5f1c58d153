//! Delivering entries one at a time (or handing a group to
//! [`super::joined`]) and committing what the backend said about each:
//! delivered, dead-lettered for its content, tried again later, or a pause.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::{Done, Drain, Finished, Outcome, ReplayView};
use crate::body::RequestBody;
use crate::classify::{Class, Kind, Verdict};
use crate::clock;
use crate::exchange::{Exchange, Routed};
use crate::graphql;
use crate::route::ErrorFormat;
use crate::spool::batch::{Joinable, joinable};
use crate::spool::record::decode_headers;
use crate::spool::refusal::system_refusal;
use crate::spool::store::{DeadInfo, Entry};

impl Drain {
    /// Of `start` (entries that may start now, in queue order, no two
    /// sharing a key), at most `free` deliveries: entries that can be
    /// joined go together, up to `per` and the byte budget per request;
    /// others (and those in `solo`) go alone. Entries not placed wait for
    /// a later round.
    pub(super) fn group(
        &self,
        start: Vec<Entry>,
        free: usize,
        per: usize,
        solo: &HashSet<i64>,
    ) -> Vec<Vec<(Entry, Option<Joinable>)>> {
        let (max_bytes, field) = {
            let view = self.view();
            let field = view.prepare.routes.vocabulary().joinable_field();
            (view.replay.batch_bytes, field)
        };
        let mut out: Vec<Vec<(Entry, Option<Joinable>)>> = Vec::new();
        let mut bytes: Vec<usize> = Vec::new();
        let mut open: HashMap<Vec<u8>, usize> = HashMap::new();
        for entry in start {
            let join = if per > 1 && !solo.contains(&entry.id) {
                joinable(&entry, field)
            } else {
                None
            };
            if let Some(j) = &join
                && let Some(&at) = open.get(&j.group)
                && out[at].len() < per
                && bytes[at] + entry.body_bytes <= max_bytes
            {
                bytes[at] += entry.body_bytes;
                out[at].push((entry, join));
                continue;
            }
            if out.len() >= free {
                continue;
            }
            if let Some(j) = &join {
                open.insert(j.group.clone(), out.len());
            }
            bytes.push(entry.body_bytes);
            out.push(vec![(entry, join)]);
        }
        out
    }

    /// Deliver entries — one as it is, several joined into one request —
    /// and commit what the backend said about each.
    pub(super) async fn deliver_batch(&self, batch: Vec<(Entry, Option<Joinable>)>) -> Finished {
        let ids: Vec<i64> = batch.iter().map(|(e, _)| e.id).collect();
        let asked = Instant::now();
        let held: HashSet<i64> = match self.spool.store().renew_many(&ids).await {
            Ok(held) => held.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, entries = ids.len(), "spool: cannot renew the claims; trying later");
                return Finished::of(&ids, Done::Retry(Duration::from_secs(1)));
            }
        };
        // The renewal holds the entries for `lease` from when the database
        // ran it, at most `asked.elapsed()` ago; the delivery may take its
        // route's deadline. Config keeps the lease longer than every
        // deadline, but a slow renewal eats that margin: deliver only if the
        // lease outlives the delivery, so no other replica can take the
        // entry over while this one may still send it.
        if let Some(lease) = self.spool.store().lease() {
            let view = self.view();
            let longest = batch
                .iter()
                .map(|(e, _)| view.prepare.routes.deadline_of(&e.route))
                .max()
                .unwrap_or(Duration::ZERO);
            if lease.saturating_sub(asked.elapsed()) <= longest {
                tracing::warn!(
                    entries = ids.len(),
                    renewal_ms = asked.elapsed().as_millis() as u64,
                    "spool: the claims' renewal took too long to deliver on them safely; trying later"
                );
                return Finished::of(&ids, Done::Retry(Duration::ZERO));
            }
        }
        // Entries another replica took over are its to deliver.
        let lost: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !held.contains(id))
            .collect();
        let mut mine: Vec<(Entry, Option<Joinable>)> = batch
            .into_iter()
            .filter(|(e, _)| held.contains(&e.id))
            .collect();
        let mut finished = match mine.len() {
            0 => Finished::of(&[], Done::Lost),
            1 => {
                let (entry, _) = mine.remove(0);
                let id = entry.id;
                Finished::of(&[id], self.deliver_and_commit(entry).await)
            }
            _ => self.deliver_joined(mine).await,
        };
        finished.gone.extend(lost);
        finished
    }

    /// Deliver one entry and commit the result.
    async fn deliver_and_commit(&self, entry: Entry) -> Done {
        let outcome = self.deliver(&entry).await;
        let metrics = &self.spool.inner.metrics;
        let store = self.spool.store();
        match outcome {
            Outcome::Delivered => {
                if let Err(e) = store.delivered(entry.id).await {
                    tracing::error!(error = %e, entry = entry.id, "spool: cannot delete a delivered entry; it will be sent again");
                    return Done::Retry(Duration::from_secs(1));
                }
                metrics.replay_delivered.inc();
                tracing::info!(
                    target: "spool",
                    entry = entry.id,
                    request_id = %entry.request_id,
                    route = %entry.route,
                    attempts = entry.attempts + 1,
                    "spooled write delivered"
                );
                Done::Gone
            }
            Outcome::Refused(info) => {
                if !self.move_to_dead_letters(&entry, info).await {
                    return Done::Retry(Duration::from_secs(1));
                }
                Done::Gone
            }
            Outcome::Transient { error, wait } => {
                metrics.replay_transient.inc();
                let _ = store.failed(entry.id, error.clone()).await;
                tracing::info!(
                    target: "spool",
                    entry = entry.id,
                    error = %error,
                    "spooled write not delivered yet"
                );
                Done::Retry(wait.unwrap_or(Duration::ZERO))
            }
            Outcome::SystemRefusal { reason, detail } => {
                metrics.replay_transient.inc();
                let _ = store.failed(entry.id, detail.clone()).await;
                Done::Pause { reason, detail }
            }
        }
    }

    /// Move an entry refused for its content to the dead letters, said in
    /// the log and counted; `false` when the store could not (it stays).
    pub(super) async fn move_to_dead_letters(&self, entry: &Entry, info: DeadInfo) -> bool {
        tracing::warn!(
            target: "spool",
            entry = entry.id,
            request_id = %entry.request_id,
            route = %entry.route,
            kind = %info.kind,
            status = info.status,
            reason = %info.reason,
            "spooled write refused by the backend for its content; moved to dead letters"
        );
        match self.spool.store().dead_letter(entry.id, info).await {
            Ok(()) => {
                self.spool.inner.metrics.replay_dead_lettered.inc();
                true
            }
            Err(e) => {
                tracing::error!(error = %e, entry = entry.id, "spool: cannot dead-letter an entry");
                false
            }
        }
    }

    /// A refusal (permanent class) of this entry: its content's fault, or
    /// the system's?
    pub(super) fn refusal(&self, class: &Class, info: DeadInfo) -> Outcome {
        match system_refusal(class, &self.view().replay.dead_letter_statuses) {
            None => Outcome::Refused(info),
            Some(reason) => Outcome::SystemRefusal {
                reason,
                detail: info.reason,
            },
        }
    }

    pub(super) fn request(
        view: &ReplayView,
        entry: &Entry,
    ) -> Result<(Request<RequestBody>, Arc<Exchange>), String> {
        let body = entry.body.clone();
        let op = graphql::operation_of(&body).ok();
        let method =
            http::Method::from_bytes(entry.method.as_bytes()).map_err(|e| e.to_string())?;
        let path = entry.path.split('?').next().unwrap_or("/");
        let routes = &view.prepare.routes;
        let route = routes
            .all()
            .iter()
            .find(|r| *r.name == *entry.route)
            .cloned()
            .unwrap_or_else(|| routes.find(&method, path, op.as_deref()).clone());
        let mut headers = decode_headers(&entry.headers);
        headers.insert(http::header::HOST, view.prepare.target.host().clone());
        // The stored length is the original request's; an entry cut from a
        // batch, or a joined replay, has a body of its own (hyper writes
        // the length of the body it sends).
        headers.remove(http::header::CONTENT_LENGTH);
        if let Some((name, value)) = &view.api_key {
            headers.insert(name.clone(), value.clone());
        }
        let request_id = HeaderValue::from_str(&entry.request_id)
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
        let ex = Exchange::new(request_id);
        ex.set_routed(Routed {
            deadline: clock::after(ex.started, route.deadline),
            metrics: view.prepare.route_metrics[route.index].clone(),
            route,
            operation: op,
            idempotent: true,
            replayable: true,
            error_format: ErrorFormat::Graphql,
            body_bytes: Some(body.len() as u64),
            keys: entry.keys.clone().into_boxed_slice(),
        });
        let mut req = Request::new(RequestBody::full(body));
        *req.method_mut() = method;
        *req.uri_mut() = view
            .prepare
            .target
            .uri_for(&entry.path)
            .map_err(|e| e.to_string())?;
        *req.headers_mut() = headers;
        req.extensions_mut().insert(ex.clone());
        Ok((req, ex))
    }

    async fn deliver(&self, entry: &Entry) -> Outcome {
        let view = self.view.load_full();
        let (req, ex) = match Self::request(&view, entry) {
            Ok(r) => r,
            Err(reason) => {
                // The stored write itself cannot be sent: its content's fault.
                return Outcome::Refused(DeadInfo {
                    class: "permanent".into(),
                    kind: "bad_request".into(),
                    status: None,
                    response: None,
                    reason: format!("cannot rebuild the request: {reason}"),
                });
            }
        };
        self.spool.inner.metrics.replay_requests.inc();
        let mut service = view.service.clone();
        let result = match service.ready().await {
            Ok(svc) => svc.call(req).await,
            Err(e) => Err(e),
        };
        let attempts = ex.attempts();
        match result {
            Ok(resp) => {
                let class = resp
                    .extensions()
                    .get::<Class>()
                    .copied()
                    .unwrap_or(Class::OK);
                match class.verdict {
                    Verdict::Success => Outcome::Delivered,
                    Verdict::Transient => Outcome::Transient {
                        error: format!("{} ({} attempts)", class.kind.as_str(), attempts),
                        wait: class.retry_after,
                    },
                    Verdict::Permanent => {
                        let status = resp.status();
                        // Keep the backend's answer (bounded) for the operator.
                        let limited = http_body_util::Limited::new(resp.into_body(), 64 * 1024);
                        let response = http_body_util::BodyExt::collect(limited)
                            .await
                            .ok()
                            .map(|c| c.to_bytes().to_vec());
                        let info = DeadInfo {
                            class: class.verdict.as_str().into(),
                            kind: class.kind.as_str().into(),
                            status: Some(status.as_u16()),
                            response,
                            reason: format!("backend answered {status} ({})", class.kind.as_str()),
                        };
                        self.refusal(&class, info)
                    }
                }
            }
            Err(e) => {
                let class = Class::of_error(&e);
                if class.verdict == Verdict::Permanent {
                    let info = DeadInfo {
                        class: class.verdict.as_str().into(),
                        kind: class.kind.as_str().into(),
                        status: None,
                        response: None,
                        reason: e.to_string(),
                    };
                    self.refusal(&class, info)
                } else {
                    let wait = if class.kind == Kind::CircuitOpen {
                        self.view().breaker.retry_after()
                    } else {
                        None
                    };
                    Outcome::Transient {
                        error: format!("{e} ({attempts} attempts)"),
                        wait,
                    }
                }
            }
        }
    }
}
