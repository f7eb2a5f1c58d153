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
//! final result, tagged with [`AliasVerdicts`] for the spool.
//!
//! Order within a batch: when an alias is sent again, every later alias of
//! the same step (or with no known step) is sent again after it, even if it
//! had succeeded, so a step named twice still ends on its last version.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use serde_json::value::RawValue;

use crate::body::{RequestBody, ResponseBody};
use crate::classify::aliases::{AliasResult, AliasVerdicts};
use crate::classify::{Class, Classifier, Kind, Verdict};
use crate::error::Error;
use crate::exchange::{Exchange, Routed};
use crate::graphql::split::Batch;
use crate::graphql::{self, OperationType};

/// One request's batched write, while its aliases are being settled.
#[derive(Debug, Clone)]
pub(super) struct Partial {
    batch: Batch,
    keys: Vec<String>,
    /// Each field's step (`entity:id`), when it names one.
    order: Vec<Option<String>>,
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

fn answers(
    classifier: &Classifier,
    result: &Result<Response<ResponseBody>, Error>,
    keys: &[&str],
) -> Option<Vec<AliasResult>> {
    match result {
        Ok(resp) if resp.status() == StatusCode::OK => {
            classifier.aliases(resp.body().bytes()?, keys)
        }
        _ => None,
    }
}

impl Partial {
    /// After a first attempt: a partial state when the answer mixes
    /// aliases that are settled with aliases that may pass on a retry.
    pub(super) fn start(
        classifier: &Classifier,
        req: &Request<RequestBody>,
        result: &Result<Response<ResponseBody>, Error>,
    ) -> Option<Partial> {
        let body = req.body().bytes()?;
        let request = graphql::parse_request(body).ok()?;
        let op = request.operation.clone();
        let keys: Vec<&str> = op.root_fields.iter().map(|f| &*f.response_key).collect();
        let got = answers(classifier, result, &keys)?;
        let transient = got
            .iter()
            .filter(|a| a.verdict == Verdict::Transient)
            .count();
        if transient == 0 || transient == got.len() {
            // Nothing settled, or nothing left to retry: the whole answer
            // says it.
            return None;
        }
        let batch = Batch::parse(body)?;
        let order = op
            .root_fields
            .iter()
            .zip(request.root_ids())
            .map(|(f, id)| id.map(|id| crate::route::literalai::order_key(&f.name, &id)))
            .collect();
        let mut p = Partial {
            batch,
            keys: keys.iter().map(|k| k.to_string()).collect(),
            order,
            settled: vec![None; keys.len()],
            pending: (0..keys.len()).collect(),
            answered: true,
        };
        p.take(got);
        Some(p)
    }

    /// Take an attempt's answers for the pending fields: settled ones are
    /// kept, the rest (and what must follow them) stay pending.
    fn take(&mut self, got: Vec<AliasResult>) {
        let mut open = Vec::new();
        for (&i, a) in self.pending.iter().zip(got) {
            if a.verdict == Verdict::Transient {
                open.push(i);
                self.settled[i] = Some(a);
            } else {
                self.settled[i] = Some(a);
            }
        }
        self.pending = self.close_over(open);
    }

    /// `open` and every later field that must be sent again after one of
    /// them: the same step, or a step that is not known.
    fn close_over(&self, open: Vec<usize>) -> Vec<usize> {
        let mut out = vec![false; self.keys.len()];
        for &i in &open {
            out[i] = true;
        }
        for i in 0..self.keys.len() {
            if !out[i] {
                continue;
            }
            for (j, flag) in out.iter_mut().enumerate().skip(i + 1) {
                let same = match (&self.order[i], &self.order[j]) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                };
                if same {
                    *flag = true;
                }
            }
        }
        (0..out.len()).filter(|&i| out[i]).collect()
    }

    /// After a later attempt (which sent the pending fields).
    pub(super) fn next(
        &mut self,
        classifier: &Classifier,
        result: &Result<Response<ResponseBody>, Error>,
        class: &Class,
    ) -> Step {
        let keys: Vec<&str> = self
            .pending
            .iter()
            .map(|&i| self.keys[i].as_str())
            .collect();
        let got = answers(classifier, result, &keys);
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
            .find_map(|&i| self.settled[i].as_ref().map(|a| a.kind))
            .unwrap_or(Kind::ItemNotOk);
        Class {
            verdict: Verdict::Transient,
            kind,
            ..Class::OK
        }
    }

    /// The next attempt: only the open fields.
    pub(super) fn rewrite(&self, req: &mut Request<RequestBody>) {
        let body = self.batch.subset(&self.pending);
        req.headers_mut().remove(http::header::CONTENT_LENGTH);
        *req.body_mut() = RequestBody::full(body);
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
        // Open fields whose last attempt carried no answer of their own.
        let whole = if answered {
            None
        } else {
            Some(whole_failure(result, ex, class))
        };
        let mut data = String::from("{");
        let mut errors: Vec<Box<RawValue>> = Vec::new();
        let mut verdicts = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let answered = settled[i].take();
            let (verdict, value) = match answered {
                Some(a) if !(pending.contains(&i) && whole.is_some()) => {
                    errors.extend(a.errors);
                    (a.verdict, a.data)
                }
                _ => match &whole {
                    Some(w) => {
                        errors.push(w.error_for(key));
                        (w.class, None)
                    }
                    None => (Verdict::Transient, None),
                },
            };
            verdicts.push(verdict);
            if i > 0 {
                data.push(',');
            }
            data.push_str(&serde_json::Value::String(key.clone()).to_string());
            data.push(':');
            data.push_str(value.as_deref().map_or("null", RawValue::get));
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
        let merged_class = merged(&verdicts, class);
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
            .insert(AliasVerdicts(Arc::from(verdicts)));
        *result = Ok(resp);
    }
}

/// The class of the merged answer: success when every alias succeeded,
/// else transient if one is still open, else permanent.
fn merged(verdicts: &[Verdict], last: &Class) -> Class {
    if verdicts.iter().all(|v| *v == Verdict::Success) {
        return Class::OK;
    }
    let verdict = if verdicts.contains(&Verdict::Transient) {
        Verdict::Transient
    } else {
        Verdict::Permanent
    };
    let kind = if last.is_failure() {
        last.kind
    } else {
        Kind::ItemNotOk
    };
    Class {
        verdict,
        kind,
        ..*last
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
        let v = serde_json::json!({
            "message": self.message,
            "path": [key],
            "extensions": {
                "code": self.code,
                "class": self.class.as_str(),
                "retryable": self.class == Verdict::Transient,
                "attempts": self.attempts,
                "request_id": self.request_id,
            }
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
