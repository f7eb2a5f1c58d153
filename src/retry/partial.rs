//! Partial results of a batched write: what the backend settled is kept,
//! and only the aliases that failed for a reason that may pass are sent
//! again.
//!
//! The SDK writes steps as one mutation with an alias per step, and the
//! backend answers per alias. When some aliases succeed (or are refused for
//! good) and others fail transiently, sending the whole document again
//! would write the settled steps twice, and answering the whole request as
//! failed would tell the app that written steps were lost. So the policy
//! keeps each alias's final answer, rewrites the next attempt to the
//! aliases still open ([`Batch::subset`]: their fields and the variables
//! they use, as sent), and when it stops — everything settled, or no retry
//! allowed — answers one response in which every alias carries its true
//! final result, tagged with [`AliasAnswers`] for the spool.
//!
//! Each attempt's aliases are judged once, by the classify layer (told by
//! [`AttemptAliases`] which aliases a rewritten attempt carries); this
//! module only merges those judgements.
//!
//! Order within a batch: when an alias is sent again, every later alias of
//! the same step (or of a barrier, or with no known step) is sent again
//! after it, even if it had succeeded, so a step named twice still ends on
//! its last version. If the earlier one is still open when the policy
//! stops, the later one stays open too (transient), whatever its last
//! answer: the spool then stores both, in order, and the version the
//! backend holds last is the one the app sent last.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use serde_json::value::RawValue;

use crate::body::{RequestBody, ResponseBody};
use crate::classify::aliases::{AliasAnswers, AliasResult, AttemptAliases, merged_class};
use crate::classify::{Class, Kind, Verdict};
use crate::error::Error;
use crate::exchange::{Exchange, Routed};
use crate::graphql::split::Batch;
use crate::graphql::{self, OperationType};
use crate::route::{Route, hold_behind};

/// One request's batched write, while its aliases are being settled.
#[derive(Debug, Clone)]
pub(super) struct Partial {
    batch: Batch,
    keys: Vec<String>,
    /// Each field's ordering keys (as the spool stores its entry).
    order: Vec<Vec<String>>,
    settled: Vec<Option<AliasResult>>,
    /// The fields sent in the attempt now running.
    pending: Vec<usize>,
    /// Whether the last attempt answered alias by alias.
    answered: bool,
}

/// What the policy does after an attempt of a batched write.
pub(super) enum Step {
    /// Not a partial result: judge the request as a whole.
    Whole,
    /// Aliases remain open: retry them after the usual decision, with
    /// this class standing for their failure.
    Retry(Class),
    /// Everything is settled, or was answered: stop here.
    Done,
}

/// Whether this request may have its aliases settled one by one.
pub(super) fn eligible(routed: &Routed) -> bool {
    routed.idempotent
        && routed.replayable
        && routed
            .operation
            .as_ref()
            .is_some_and(|op| op.kind == OperationType::Mutation && op.root_fields.len() >= 2)
}

/// The attempt's per-alias answers, as the classify layer judged them.
fn answers(result: &Result<Response<ResponseBody>, Error>) -> Option<Vec<AliasResult>> {
    match result {
        Ok(resp) if resp.status() == StatusCode::OK => resp
            .extensions()
            .get::<AliasAnswers>()
            .map(|a| a.0.to_vec()),
        _ => None,
    }
}

impl Partial {
    /// After a first attempt: a partial state when the answer mixes
    /// aliases that are settled with aliases that may pass on a retry.
    pub(super) fn start(
        route: &Route,
        req: &Request<RequestBody>,
        result: &Result<Response<ResponseBody>, Error>,
    ) -> Option<Partial> {
        let got = answers(result)?;
        let transient = got
            .iter()
            .filter(|a| a.verdict == Verdict::Transient)
            .count();
        if transient == 0 || transient == got.len() {
            // Nothing settled, or nothing left to retry: the whole answer
            // says it.
            return None;
        }
        let body = req.body().bytes()?;
        let request = graphql::parse_request(body).ok()?;
        let op = request.operation.clone();
        if got.len() != op.root_fields.len() {
            return None;
        }
        let batch = Batch::parse(body)?;
        let order = route.field_keys(&op, &request.root_ids());
        let keys: Vec<String> = op
            .root_fields
            .iter()
            .map(|f| f.response_key.to_string())
            .collect();
        let mut p = Partial {
            batch,
            settled: vec![None; keys.len()],
            pending: (0..keys.len()).collect(),
            keys,
            order,
            answered: true,
        };
        p.take(got);
        Some(p)
    }

    /// Take an attempt's answers for the pending fields: settled ones are
    /// kept, the rest (and what must follow them) stay pending.
    fn take(&mut self, got: Vec<AliasResult>) {
        let mut open = vec![false; self.keys.len()];
        for (&i, a) in self.pending.iter().zip(got) {
            open[i] = a.verdict == Verdict::Transient;
            self.settled[i] = Some(a);
        }
        self.pending = self.close_over(open);
    }

    /// The fields in `open` and every later field that must be sent again
    /// after one of them (see [`hold_behind`]).
    fn close_over(&self, mut open: Vec<bool>) -> Vec<usize> {
        hold_behind(&mut open, &self.order);
        (0..open.len()).filter(|&i| open[i]).collect()
    }

    /// After a later attempt (which sent the pending fields).
    pub(super) fn next(
        &mut self,
        result: &Result<Response<ResponseBody>, Error>,
        class: &Class,
    ) -> Step {
        let got = answers(result).filter(|g| g.len() == self.pending.len());
        self.answered = got.is_some();
        match got {
            Some(got) => {
                self.take(got);
                if self.pending.is_empty() {
                    Step::Done
                } else {
                    Step::Retry(self.open_class())
                }
            }
            // The whole attempt failed: every pending field with it.
            None if class.is_failure() => Step::Retry(*class),
            // A success that answers no alias: not confirmed.
            None => Step::Retry(Class {
                verdict: Verdict::Transient,
                kind: Kind::ItemNotOk,
                ..Class::OK
            }),
        }
    }

    /// The class that stands for the open fields' failure.
    pub(super) fn open_class(&self) -> Class {
        let kind = self
            .pending
            .iter()
            .find_map(|&i| {
                self.settled[i]
                    .as_ref()
                    .filter(|a| a.verdict == Verdict::Transient)
                    .map(|a| a.kind)
            })
            .unwrap_or(Kind::ItemNotOk);
        Class {
            verdict: Verdict::Transient,
            kind,
            ..Class::OK
        }
    }

    /// The next attempt: only the open fields, and the classify layer told
    /// which aliases it carries.
    pub(super) fn rewrite(&self, req: &mut Request<RequestBody>) {
        let body = self.batch.subset(&self.pending);
        req.headers_mut().remove(http::header::CONTENT_LENGTH);
        *req.body_mut() = RequestBody::full(body);
        let aliases: Arc<[Box<str>]> = self
            .pending
            .iter()
            .map(|&i| self.keys[i].as_str().into())
            .collect();
        req.extensions_mut().insert(AttemptAliases(aliases));
    }

    /// The one answer for the client, from every field's final result.
    /// `last`: the final attempt's outcome, which stands for the fields
    /// still open when it carried no per-alias answer.
    pub(super) fn finish(
        self,
        result: &mut Result<Response<ResponseBody>, Error>,
        ex: &Exchange,
        class: &Class,
    ) {
        let Partial {
            keys,
            mut settled,
            pending,
            answered,
            ..
        } = self;
        let mut still_open = vec![false; keys.len()];
        for &i in &pending {
            still_open[i] = true;
        }
        // Open fields whose last attempt carried no answer of their own.
        let whole = if answered {
            None
        } else {
            Some(whole_failure(result, ex, class))
        };
        let mut data = String::from("{");
        let mut errors: Vec<Box<RawValue>> = Vec::new();
        let mut results = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let mut r = match (settled[i].take(), &whole) {
                (Some(a), None) => a,
                (Some(a), Some(_)) if !still_open[i] => a,
                (_, Some(w)) => AliasResult {
                    verdict: w.class,
                    kind: class.kind,
                    data: None,
                    errors: vec![w.error_for(key)],
                },
                (None, None) => AliasResult {
                    verdict: Verdict::Transient,
                    kind: Kind::ItemNotOk,
                    data: None,
                    errors: Vec::new(),
                },
            };
            // A field held behind an earlier open version of its step is
            // open too, whatever its last answer said: stored after the
            // earlier one, it is applied after it.
            if still_open[i] && r.verdict == Verdict::Success {
                r.verdict = Verdict::Transient;
            }
            if i > 0 {
                data.push(',');
            }
            data.push_str(&serde_json::Value::String(key.clone()).to_string());
            data.push(':');
            data.push_str(r.data.as_deref().map_or("null", RawValue::get));
            errors.extend(r.errors.iter().cloned());
            results.push(r);
        }
        data.push('}');
        let mut body = format!("{{\"data\":{data}");
        if !errors.is_empty() {
            body.push_str(",\"errors\":[");
            for (i, e) in errors.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(e.get());
            }
            body.push(']');
        }
        body.push('}');
        let merged = merged_class(&results);
        let merged_class = Class {
            retry_after: class.retry_after,
            may_have_reached: class.may_have_reached,
            ..merged
        };
        let mut resp = Response::new(ResponseBody::full(Bytes::from(body)));
        if let Ok(last) = result.as_ref() {
            *resp.headers_mut() = last.headers().clone();
            resp.headers_mut().remove(http::header::CONTENT_LENGTH);
            resp.headers_mut().remove(http::header::TRANSFER_ENCODING);
        }
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.extensions_mut().insert(merged_class);
        resp.extensions_mut()
            .insert(AliasAnswers(Arc::from(results)));
        *result = Ok(resp);
    }
}

/// How the last attempt failed as a whole (an error, a status that is not
/// 200, an answer about the whole request), written per alias.
struct WholeFailure {
    message: String,
    code: &'static str,
    class: Verdict,
    attempts: u32,
    request_id: String,
}

impl WholeFailure {
    fn error_for(&self, key: &str) -> Box<RawValue> {
        let v = crate::respond::graphql_error(crate::respond::GraphqlError {
            message: &self.message,
            code: self.code,
            class: self.class,
            retryable: self.class == Verdict::Transient,
            attempts: self.attempts,
            request_id: &self.request_id,
            alias: Some(key),
        });
        RawValue::from_string(v.to_string()).unwrap_or_default()
    }
}

fn whole_failure(
    result: &Result<Response<ResponseBody>, Error>,
    ex: &Exchange,
    class: &Class,
) -> WholeFailure {
    let request_id = ex.request_id.to_str().unwrap_or("").to_string();
    let attempts = ex.attempts();
    let (message, code, verdict) = match result {
        Err(e) => {
            let f = crate::respond::describe(e, ex);
            (f.message, f.code, f.class)
        }
        Ok(resp) if resp.status() != StatusCode::OK => (
            format!("the backend answered {}", resp.status()),
            "upstream_status",
            class.verdict,
        ),
        Ok(_) => (
            format!(
                "the backend's answer concerns the whole request ({})",
                class.kind.as_str()
            ),
            "upstream_unconfirmed",
            if class.verdict == Verdict::Permanent {
                Verdict::Permanent
            } else {
                Verdict::Transient
            },
        ),
    };
    WholeFailure {
        message,
        code,
        class: verdict,
        attempts,
        request_id,
    }
}
