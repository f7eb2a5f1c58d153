//! Per-alias results of a batched mutation's answer.
//!
//! A backend answers a batched write alias by alias: `data.step0` may be
//! `{"ok": true}` while `data.step1` is `{"ok": false, "message": ...}`, and
//! a GraphQL error whose `path` starts with `step2` concerns that alias
//! alone. [`Classifier::aliases`] judges each alias the way
//! [`Classifier::graphql_body`] judges a whole answer, so a partial failure
//! can be retried, spooled or dead-lettered alias by alias. An error that
//! names no alias concerns the whole request; then there is no per-alias
//! answer and the request is judged as a whole.
//!
//! The judgement is made once per attempt, by the classify layer, and
//! travels on the response as [`AliasAnswers`]; the retry policy merges
//! the attempts' answers into the final one, and the spool layer and the
//! replay worker settle each alias from it. Nobody reads a merged body
//! again to decide what happened to an alias: the answers the sidecar
//! writes itself (an alias whose last attempt failed as a whole) carry
//! their verdict here, not in a code someone would have to recognise.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Class, Classifier, Kind, Verdict, errors_verdict, is_transient_code, item_verdict, matches_any,
};

/// Each alias's result, in document order: for one attempt (set by the
/// classify layer), or final (set by the retry policy when it settled a
/// batched write over several attempts, see [`crate::retry`]).
#[derive(Debug, Clone)]
pub struct AliasAnswers(pub Arc<[AliasResult]>);

impl AliasAnswers {
    /// The class of the whole answer: success when every alias succeeded,
    /// else transient when one may pass on a retry, else permanent; the
    /// kind is the first failing alias's.
    pub fn class(&self) -> Class {
        merged_class(&self.0)
    }

    /// Indexes of the aliases whose verdict is `v`.
    pub fn with_verdict(&self, v: Verdict) -> Vec<usize> {
        (0..self.0.len())
            .filter(|&i| self.0[i].verdict == v)
            .collect()
    }
}

/// On a request: the aliases this attempt carries, when the retry policy
/// rewrote it to the aliases still open (see [`crate::retry::partial`]).
/// The classify layer judges the answer against these, one by one.
#[derive(Debug, Clone)]
pub struct AttemptAliases(pub Arc<[Box<str>]>);

/// See [`AliasAnswers::class`].
pub(crate) fn merged_class(results: &[AliasResult]) -> Class {
    let first = |v: Verdict| results.iter().find(|r| r.verdict == v).map(|r| r.kind);
    let (verdict, kind) = match (first(Verdict::Transient), first(Verdict::Permanent)) {
        (Some(k), _) => (Verdict::Transient, k),
        (None, Some(k)) => (Verdict::Permanent, k),
        (None, None) => return Class::OK,
    };
    Class {
        verdict,
        kind,
        ..Class::OK
    }
}

/// What the backend said about one alias.
#[derive(Debug, Clone)]
pub struct AliasResult {
    /// Success, transient or permanent.
    pub verdict: Verdict,
    /// `Ok`, `ItemNotOk` or `GraphqlError`.
    pub kind: Kind,
    /// `data.<alias>` as the backend wrote it (absent: `None`).
    pub data: Option<Box<RawValue>>,
    /// The errors whose `path` starts with the alias, as written.
    pub errors: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow, default)]
    data: Option<std::collections::HashMap<std::borrow::Cow<'a, str>, Box<RawValue>>>,
    #[serde(default)]
    errors: Option<Vec<Box<RawValue>>>,
}

#[derive(Deserialize)]
struct ErrorHead<'a> {
    #[serde(default)]
    path: Option<Vec<serde_json::Value>>,
    #[serde(borrow, default)]
    extensions: Option<Extensions<'a>>,
}

#[derive(Deserialize)]
struct Extensions<'a> {
    #[serde(borrow, default)]
    code: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(default)]
    ok: Option<bool>,
    #[serde(borrow, default)]
    message: Option<std::borrow::Cow<'a, str>>,
}

impl Classifier {
    /// Judge each of `keys` in a GraphQL answer; `None` when the body is
    /// not a JSON object or an error names no requested alias (the answer
    /// is then about the whole request).
    ///
    /// An alias the answer leaves out, or answers `null` without an error
    /// saying why, was not confirmed: it is transient, so it is sent again
    /// rather than assumed written.
    pub fn aliases(&self, body: &[u8], keys: &[&str]) -> Option<Vec<AliasResult>> {
        let answer: Answer<'_> = serde_json::from_slice(body).ok()?;
        let mut data = answer.data.unwrap_or_default();
        // By key, so an answer with an error per alias is read in linear
        // time (the first alias of a repeated key takes its errors).
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            index.entry(*k).or_insert(i);
        }
        let mut out: Vec<AliasResult> = keys
            .iter()
            .map(|k| AliasResult {
                verdict: Verdict::Success,
                kind: Kind::Ok,
                data: data.remove(*k),
                errors: Vec::new(),
            })
            .collect();
        let mut transient_code = vec![false; keys.len()];
        for raw in answer.errors.unwrap_or_default() {
            let head: ErrorHead<'_> = serde_json::from_str(raw.get()).ok()?;
            let first = head
                .path
                .as_ref()
                .and_then(|p| p.first())
                .and_then(|v| v.as_str());
            let i = first.and_then(|f| index.get(f).copied())?;
            if head
                .extensions
                .and_then(|e| e.code)
                .is_some_and(|c| is_transient_code(&self.transient_codes, &c))
            {
                transient_code[i] = true;
            }
            out[i].errors.push(raw);
        }
        for (i, r) in out.iter_mut().enumerate() {
            if !r.errors.is_empty() {
                r.kind = Kind::GraphqlError;
                r.verdict = errors_verdict(transient_code[i]);
                continue;
            }
            let item = r
                .data
                .as_deref()
                .and_then(|d| serde_json::from_str::<Option<Item<'_>>>(d.get()).ok());
            match item {
                // Absent, `null`, or not an object: not confirmed.
                None | Some(None) => {
                    r.kind = Kind::ItemNotOk;
                    r.verdict = Verdict::Transient;
                }
                Some(Some(it)) if it.ok == Some(false) => {
                    r.kind = Kind::ItemNotOk;
                    let permanent = it
                        .message
                        .is_some_and(|m| matches_any(&m, &self.permanent_item_patterns));
                    r.verdict = item_verdict(permanent);
                }
                Some(Some(_)) => {}
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ClassifyParams;
    use super::*;

    fn verdicts(body: &str, keys: &[&str]) -> Option<Vec<(Verdict, Kind)>> {
        Classifier::new(&ClassifyParams::default())
            .aliases(body.as_bytes(), keys)
            .map(|v| v.into_iter().map(|r| (r.verdict, r.kind)).collect())
    }

    #[test]
    fn each_alias_is_judged_on_its_own() {
        let body = r#"{"data":{"s0":{"ok":true,"message":"done"},"s1":{"ok":false,"message":"db busy"},"s2":{"ok":false,"message":"Invalid step type"},"s3":null},
            "errors":[{"message":"boom","path":["s3"],"extensions":{"code":"INTERNAL_SERVER_ERROR"}},
                      {"message":"nope","path":["s4","id"],"extensions":{"code":"BAD_USER_INPUT"}}]}"#;
        assert_eq!(
            verdicts(body, &["s0", "s1", "s2", "s3", "s4"]).unwrap(),
            vec![
                (Verdict::Success, Kind::Ok),
                (Verdict::Transient, Kind::ItemNotOk),
                (Verdict::Permanent, Kind::ItemNotOk),
                (Verdict::Transient, Kind::GraphqlError),
                (Verdict::Permanent, Kind::GraphqlError),
            ]
        );
    }

    #[test]
    fn an_alias_left_unanswered_is_not_assumed_written() {
        let v = verdicts(r#"{"data":{"a":{"ok":true}}}"#, &["a", "b"]).unwrap();
        assert_eq!(v[1], (Verdict::Transient, Kind::ItemNotOk));
    }

    #[test]
    fn errors_about_the_whole_request_have_no_per_alias_answer() {
        assert!(verdicts(r#"{"errors":[{"message":"bad key"}]}"#, &["a"]).is_none());
        assert!(
            verdicts(
                r#"{"errors":[{"message":"x","path":["other"]}],"data":{"a":{"ok":true}}}"#,
                &["a"]
            )
            .is_none()
        );
        assert!(verdicts("<html>", &["a"]).is_none());
    }

    #[test]
    fn answers_are_kept_as_written() {
        let body = r#"{"data":{"a":{"ok" : false, "message":"Invalid"}},"errors":[]}"#;
        let r = Classifier::new(&ClassifyParams::default())
            .aliases(body.as_bytes(), &["a"])
            .unwrap();
        assert_eq!(
            r[0].data.as_ref().unwrap().get(),
            r#"{"ok" : false, "message":"Invalid"}"#
        );
    }
}
