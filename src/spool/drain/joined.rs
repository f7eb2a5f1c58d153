//! Joined replays: several single-step entries sent as one batched
//! mutation, each alias's answer (the verdict the retry layer reached for
//! it, never judged again from the body) settling its own entry.

use std::time::Duration;

use http::Response;
use tower::{Service, ServiceExt};

use super::{Done, Drain, Finished, Outcome, ReplayView};
use crate::body::ResponseBody;
use crate::classify::aliases::{AliasAnswers, AliasResult, AttemptAliases};
use crate::classify::{Class, Kind, Verdict};
use crate::error::Error;
use crate::graphql::split;
use crate::spool::batch::Joinable;
use crate::spool::refusal::system_refusal;
use crate::spool::store::{DeadInfo, Entry};

/// What the aliases of a joined replay decided, entry by entry.
struct Verdicts {
    delivered: Vec<i64>,
    open: Vec<i64>,
    refused: Vec<(Entry, DeadInfo)>,
    /// The pause reason and detail, when an alias was refused as a system.
    paused_by: Option<(String, String)>,
}

impl Drain {
    /// Deliver several single-step entries as one batched mutation and
    /// commit each alias's answer to its own entry.
    pub(super) async fn deliver_joined(&self, batch: Vec<(Entry, Option<Joinable>)>) -> Finished {
        let view = self.view.load_full();
        let metrics = &self.spool.inner.metrics;
        let ids: Vec<i64> = batch.iter().map(|(e, _)| e.id).collect();
        let parts: Vec<&split::Batch> = batch
            .iter()
            .filter_map(|(_, j)| j.as_ref().map(|j| &j.batch))
            .collect();
        if parts.len() != batch.len() {
            // Only joinable entries are grouped; nothing to join otherwise.
            return Finished::of(&ids, Done::Retry(Duration::ZERO));
        }
        let name = parts[0]
            .name()
            .filter(|n| parts.iter().all(|p| p.name() == Some(*n)));
        let mut joined = batch[0].0.clone();
        joined.body = split::join(name, &parts);
        joined.body_bytes = joined.body.len();
        joined.keys = batch.iter().flat_map(|(e, _)| e.keys.clone()).collect();
        let keys: Vec<String> = (0..batch.len()).map(split::joined_key).collect();
        let outcome = match Self::request(&view, &joined) {
            Ok((mut req, ex)) => {
                // Judged alias by alias, always: a success of the whole is
                // no confirmation of each entry.
                req.extensions_mut().insert(AttemptAliases(
                    keys.iter().map(|k| k.as_str().into()).collect(),
                ));
                metrics.replay_requests.inc();
                let mut service = view.service.clone();
                let result = match service.ready().await {
                    Ok(svc) => svc.call(req).await,
                    Err(e) => Err(e),
                };
                Some((result, ex.attempts()))
            }
            Err(_) => None,
        };
        let (result, attempts) = match outcome {
            Some(o) => o,
            None => {
                // The joined request could not be built: send them alone.
                return Finished {
                    gone: Vec::new(),
                    solo: ids,
                    done: Done::Retry(Duration::ZERO),
                };
            }
        };
        let (answers, class, status, body) = match &result {
            Ok(resp) => {
                let class = resp
                    .extensions()
                    .get::<Class>()
                    .copied()
                    .unwrap_or(Class::OK);
                let body = resp.body().bytes().map(<[u8]>::to_vec);
                // Each alias's verdict as the classify layer and the retry
                // policy reached it: never judged again from the body.
                let answers = resp
                    .extensions()
                    .get::<AliasAnswers>()
                    .filter(|a| a.0.len() == batch.len())
                    .map(|a| a.0.to_vec());
                (answers, class, Some(resp.status().as_u16()), body)
            }
            Err(e) => (None, Class::of_error(e), None, None),
        };
        let Some(answers) = answers else {
            return self
                .joined_as_a_whole(&ids, &result, class, status, body, attempts)
                .await;
        };
        let verdicts = Self::judge_aliases(&view, &batch, &keys, answers, status);
        self.commit_joined(batch.len(), verdicts, class, attempts)
            .await
    }

    /// Each alias's verdict (as the retry layer reached it) settles its
    /// own entry: delivered, open, refused for its content, or (refused as
    /// a system) kept with the queue paused — the rule live writes share.
    fn judge_aliases(
        view: &ReplayView,
        batch: &[(Entry, Option<Joinable>)],
        keys: &[String],
        answers: Vec<AliasResult>,
        status: Option<u16>,
    ) -> Verdicts {
        let mut delivered = Vec::new();
        let mut open = Vec::new();
        let mut refused: Vec<(Entry, DeadInfo)> = Vec::new();
        // An alias refused as a system (the retry of it met a 401, say) is
        // decided by the rule live writes share: kept, and the queue pauses.
        let mut paused_by: Option<(String, String)> = None;
        for ((entry, _), (key, a)) in batch.iter().zip(keys.iter().zip(answers)) {
            let system = (a.verdict == Verdict::Permanent)
                .then(|| {
                    let class = Class {
                        verdict: Verdict::Permanent,
                        kind: a.kind,
                        ..Class::OK
                    };
                    system_refusal(&class, &view.replay.dead_letter_statuses)
                })
                .flatten();
            if let Some(reason) = system {
                paused_by
                    .get_or_insert((reason, format!("{} to a batched replay", a.kind.as_str())));
                open.push(entry.id);
                continue;
            }
            match a.verdict {
                Verdict::Success => delivered.push(entry.id),
                Verdict::Transient => open.push(entry.id),
                Verdict::Permanent => {
                    let mut answer = format!(
                        "{{\"data\":{{{}:{}}}",
                        serde_json::Value::String(key.clone()),
                        a.data.as_deref().map_or("null", |d| d.get())
                    );
                    if !a.errors.is_empty() {
                        let errors: Vec<&str> = a.errors.iter().map(|e| e.get()).collect();
                        answer.push_str(&format!(",\"errors\":[{}]", errors.join(",")));
                    }
                    answer.push('}');
                    refused.push((
                        entry.clone(),
                        DeadInfo {
                            class: Verdict::Permanent.as_str().into(),
                            kind: a.kind.as_str().into(),
                            status,
                            response: Some(answer.into_bytes()),
                            reason: format!(
                                "backend refused this step in a batched replay ({})",
                                a.kind.as_str()
                            ),
                        },
                    ));
                }
            }
        }
        Verdicts {
            delivered,
            open,
            refused,
            paused_by,
        }
    }

    /// Commit what the aliases' answers decided.
    async fn commit_joined(
        &self,
        aliases: usize,
        verdicts: Verdicts,
        class: Class,
        attempts: u32,
    ) -> Finished {
        let Verdicts {
            delivered,
            open,
            refused,
            paused_by,
        } = verdicts;
        let store = self.spool.store();
        let metrics = &self.spool.inner.metrics;
        let mut gone = Vec::new();
        if !delivered.is_empty() {
            match store.delivered_many(delivered.clone()).await {
                Ok(()) => {
                    metrics.replay_delivered.inc_by(delivered.len() as u64);
                    tracing::info!(
                        target: "spool",
                        entries = delivered.len(),
                        first = delivered[0],
                        aliases,
                        "spooled writes delivered in one batched request"
                    );
                    gone.extend(delivered);
                }
                Err(e) => {
                    tracing::error!(error = %e, "spool: cannot delete delivered entries; they will be sent again");
                }
            }
        }
        for (entry, info) in refused {
            if self.move_to_dead_letters(&entry, info).await {
                gone.push(entry.id);
            }
        }
        let done = if open.is_empty() {
            Done::Gone
        } else {
            metrics.replay_transient.inc_by(open.len() as u64);
            let error = format!("{} ({attempts} attempts)", class.kind.as_str());
            let _ = store.failed_many(open, error).await;
            match paused_by {
                Some((reason, detail)) => Done::Pause { reason, detail },
                None => Done::Retry(class.retry_after.unwrap_or(Duration::ZERO)),
            }
        };
        Finished {
            gone,
            solo: Vec::new(),
            done,
        }
    }

    /// A joined request answered as a whole (an error, a status, an error
    /// that names no alias): the same for every entry in it, except that a
    /// refusal of its content dead-letters nothing — its entries are sent
    /// again one by one.
    async fn joined_as_a_whole(
        &self,
        ids: &[i64],
        result: &Result<Response<ResponseBody>, Error>,
        class: Class,
        status: Option<u16>,
        body: Option<Vec<u8>>,
        attempts: u32,
    ) -> Finished {
        let failed = |error: String| async move {
            self.spool
                .inner
                .metrics
                .replay_transient
                .inc_by(ids.len() as u64);
            let _ = self.spool.store().failed_many(ids.to_vec(), error).await;
        };
        match class.verdict {
            Verdict::Success => {
                // Success without an answer per alias: not confirmed.
                failed("no answer per alias".into()).await;
                Finished::of(ids, Done::Retry(Duration::ZERO))
            }
            Verdict::Transient => {
                let wait = match result {
                    Err(_) if class.kind == Kind::CircuitOpen => self.view().breaker.retry_after(),
                    _ => class.retry_after,
                };
                let error = match result {
                    Err(e) => format!("{e} ({attempts} attempts)"),
                    Ok(_) => format!("{} ({attempts} attempts)", class.kind.as_str()),
                };
                failed(error).await;
                let mut finished = Finished::of(ids, Done::Retry(wait.unwrap_or(Duration::ZERO)));
                // The backend took the request and failed on it (a 5xx, a
                // hang, a reset, an error that names no alias): one entry
                // may be the cause, so none may hold back the others —
                // they go one by one from now on. A request that never
                // reached it (refused connection, open breaker) or a rate
                // limit says nothing about the entries.
                if class.may_have_reached && class.kind != Kind::Status(429) {
                    finished.solo = ids.to_vec();
                }
                finished
            }
            Verdict::Permanent => {
                let reason = match result {
                    Err(e) => e.to_string(),
                    Ok(_) => format!(
                        "backend answered {} ({}) to a batched replay",
                        status.unwrap_or(0),
                        class.kind.as_str()
                    ),
                };
                let info = DeadInfo {
                    class: class.verdict.as_str().into(),
                    kind: class.kind.as_str().into(),
                    status,
                    response: body,
                    reason,
                };
                match self.refusal(&class, info) {
                    Outcome::SystemRefusal { reason, detail } => {
                        failed(detail.clone()).await;
                        Finished::of(ids, Done::Pause { reason, detail })
                    }
                    outcome => {
                        let reason = match outcome {
                            Outcome::Refused(info) => info.reason,
                            _ => String::new(),
                        };
                        tracing::info!(
                            target: "spool",
                            entries = ids.len(),
                            reason = %reason,
                            "a batched replay was refused as a whole; sending its entries one by one"
                        );
                        Finished {
                            gone: Vec::new(),
                            solo: ids.to_vec(),
                            done: Done::Retry(Duration::ZERO),
                        }
                    }
                }
            }
        }
    }
}
