//! Reloads: the one task that applies them in the order they were asked
//! for, and the steps of one — read and validate the config, build the next
//! generation next to the one in force, swap it in, report.
//!
//! Separate from start-up because a reload must be all-or-nothing while the
//! sidecar serves: every way it can fail is decided here, before the swap,
//! and ends in the same refusal (the generation in force stays, the report
//! and the log name the reason).

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tower::Service;

use super::Core;
use crate::clock::now_ms;
use crate::config::Source;
use crate::edge::AccessBody;
use crate::error::Error;
use crate::generation::{Current, Generation, ReloadReport, ReloadRequest, Trigger};
use crate::metrics::ReloadLabels;
use crate::stack::Shared;

/// The one task that applies reloads, in the order they were asked for,
/// until shutdown or until nothing can ask any more; it hands `core` back
/// for the drain. Without a `source` every request is dropped unanswered.
pub(super) fn spawn_reloader<S, F>(
    mut core: Core,
    current: Current<S>,
    source: Option<Source>,
    mut requests: mpsc::UnboundedReceiver<ReloadRequest>,
    mut stop: watch::Receiver<bool>,
    build: F,
) -> JoinHandle<Core>
where
    F: Fn(Shared) -> S + Copy + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<AccessBody>, Error = Error>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let req = tokio::select! {
                r = requests.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
                () = crate::shutdown::shutdown_requested(&mut stop) => break,
            };
            let report = match &source {
                Some(source) => reload(&mut core, &current, source, req.trigger, build).await,
                None => continue,
            };
            if let Some(reply) = req.reply {
                let _ = reply.send(report);
            }
        }
        core
    })
}

/// Apply one reload: read, validate, build, swap. An invalid config, or a
/// generation that cannot be built (a CA file that does not parse, a spool
/// that cannot be opened), changes nothing.
async fn reload<S, F>(
    core: &mut Core,
    current: &Current<S>,
    source: &Source,
    trigger: Trigger,
    build: F,
) -> ReloadReport
where
    F: Fn(Shared) -> S,
{
    let cur = current.load_full();
    let (next, restart_needed) = match source.load().and_then(|next| cur.config.reload(next)) {
        Ok(n) => n,
        Err(e) => {
            let key = e.key_name().map(str::to_string);
            return refuse(core, &cur, trigger, e.to_string(), key);
        }
    };
    let next = match core
        .start_generation(cur.number + 1, next, Some(&cur), build)
        .await
    {
        Ok(g) => g,
        Err(e) => return refuse(core, &cur, trigger, e.to_string(), None),
    };
    crate::telemetry::apply(&next.config.log);
    let report = ReloadReport {
        result: "applied",
        generation: next.number,
        trigger,
        at_ms: now_ms(),
        restart_needed,
        error: None,
        key: None,
    };
    swap_in(core, current, next, &report);
    report
}

/// Put `next` in force, with the admin port's view of it, and say so.
fn swap_in<S>(core: &Core, current: &Current<S>, next: Generation<S>, report: &ReloadReport) {
    core.admin_view(&next, Some(report.clone()));
    current.store(Arc::new(next));
    for warning in &current.load().config.warnings {
        tracing::warn!(%warning, "config");
    }
    core.metrics
        .reloads
        .get_or_create(&ReloadLabels { result: "applied" })
        .inc();
    tracing::info!(
        generation = report.generation,
        trigger = ?report.trigger,
        restart_needed = ?report.restart_needed,
        "config reloaded"
    );
}

/// Refuse a reload for `error` (at `key`, when one is at fault): the
/// generation in force stays, and the report says so.
fn refuse<S>(
    core: &Core,
    cur: &Generation<S>,
    trigger: Trigger,
    error: String,
    key: Option<String>,
) -> ReloadReport {
    let report = ReloadReport {
        result: "invalid",
        generation: cur.number,
        trigger,
        at_ms: now_ms(),
        restart_needed: Vec::new(),
        error: Some(error),
        key,
    };
    core.metrics
        .reloads
        .get_or_create(&ReloadLabels { result: "invalid" })
        .inc();
    tracing::error!(
        generation = cur.number,
        trigger = ?report.trigger,
        key = report.key.as_deref().unwrap_or("-"),
        error = report.error.as_deref().unwrap_or("-"),
        "config reload refused; still serving the generation in force"
    );
    core.admin_view(cur, Some(report.clone()));
    report
}
