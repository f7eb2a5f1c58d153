//! Batched writes in the spool, alias by alias.
//!
//! A write of several aliases (`step0: ingestStep(...) step1: ...` in
//! LiteralAI's words) is
//! stored as one entry per alias when its document can be cut safely (see
//! [`crate::graphql::split`]): each entry holds that alias's field and the
//! variables it uses, exactly as the app sent them, and the order keys of
//! its own step. So each step's versions are ordered on their own, one
//! stuck step holds back no other, and the replay worker can join waiting
//! entries of different steps into one batched request (see
//! [`super::drain`]). A document that cannot be cut is stored whole.
//!
//! When the retry policy settled some aliases of a live write and others
//! stayed open (see [`crate::retry::partial`]), only the open ones are
//! stored, and the app's answer carries the backend's own result for the
//! rest.

use bytes::Bytes;
use http::{HeaderValue, Response};
use serde_json::Value;

use super::record::{self, X_SIDECAR_SPOOLED};
use super::{Spool, Write};
use crate::body::ResponseBody;
use crate::classify::{Class, Kind, Verdict};
use crate::graphql::split::Batch;
use crate::graphql::{self, Operation};
use crate::route::Route;

/// The parts of a request a spooled copy needs.
pub(super) struct Head {
    method: http::Method,
    uri: http::Uri,
    /// The headers to keep, already in the form the store holds them: a
    /// few hundred bytes where a copy of the header map is over a
    /// kilobyte, kept by every spooling write while it is delivered.
    headers: Vec<u8>,
    request_id: http::HeaderValue,
}

impl Spool {
    /// What a write on a spooling route keeps in case it has to be stored.
    pub(super) fn head_of<B>(
        &self,
        req: &http::Request<B>,
        request_id: &http::HeaderValue,
    ) -> Head {
        Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: record::encode_headers(req.headers(), &self.inner.live.load().skip),
            request_id: request_id.clone(),
        }
    }

    /// The entries a write on `route` becomes: one per root field (only
    /// those at `only`, when given) if its document can be cut, else the
    /// whole write under `keys`.
    pub(super) fn writes_of(
        &self,
        head: &Head,
        route: &Route,
        op: &Operation,
        body: &Bytes,
        keys: &[String],
        only: Option<&[usize]>,
    ) -> Vec<Write> {
        // Each entry gets its own body and keys; the rest is shared, and the
        // write's whole key list is never copied per entry (that made a
        // write of n fields cost n² ).
        let entry = |body: Bytes, keys: Vec<String>| Write {
            route: route.name.clone(),
            request_id: head.request_id.to_str().unwrap_or("-").to_string(),
            method: head.method.as_str().to_string(),
            path: head
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            headers: head.headers.clone(),
            body,
            keys,
        };
        if op.root_fields.len() < 2 && only.is_none() {
            return vec![entry(body.clone(), keys.to_vec())];
        }
        let (Some(batch), Ok(request)) = (Batch::parse(body), graphql::parse_request(body)) else {
            return vec![entry(body.clone(), keys.to_vec())];
        };
        let mut field_keys = route.field_keys(op, &request.root_ids());
        let all: Vec<usize> = (0..batch.len()).collect();
        only.unwrap_or(&all)
            .iter()
            .filter_map(|&i| {
                let keys = std::mem::take(field_keys.get_mut(i)?);
                Some(entry(batch.subset(&[i]), keys))
            })
            .collect()
    }
}

/// The answer for a write whose aliases at `spooled` were stored: the
/// backend's answer, with each stored alias answered as a spooled write is
/// (see [`record::spooled_response`]) and the errors about it removed.
pub(super) fn partly_spooled(
    resp: Response<ResponseBody>,
    op: &Operation,
    body: &[u8],
    spooled: &[usize],
) -> Response<ResponseBody> {
    let (parts, answer) = resp.into_parts();
    let mut merged: Value = answer
        .bytes()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_else(|| serde_json::json!({"data": {}}));
    let synthetic = record::spooled_response(op, body);
    let synthetic: Value = synthetic
        .body()
        .bytes()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(Value::Null);
    let keys: Vec<&str> = spooled
        .iter()
        .filter_map(|&i| op.root_fields.get(i).map(|f| &*f.response_key))
        .collect();
    let stored: std::collections::HashSet<&str> = keys.iter().copied().collect();
    for key in &keys {
        if let Some(data) = merged.get_mut("data").and_then(Value::as_object_mut) {
            data.insert(
                key.to_string(),
                synthetic["data"].get(*key).cloned().unwrap_or(Value::Null),
            );
        }
    }
    let mut settled_ok = true;
    if let Some(errors) = merged.get_mut("errors").and_then(Value::as_array_mut) {
        errors.retain(|e| {
            let first = e["path"].get(0).and_then(Value::as_str);
            !first.is_some_and(|f| stored.contains(f))
        });
        settled_ok = errors.is_empty();
        if errors.is_empty()
            && let Some(obj) = merged.as_object_mut()
        {
            obj.remove("errors");
        }
    }
    // The aliases not stored were settled by the backend: success, or a
    // refusal the app must see.
    let refused = op.root_fields.iter().any(|f| {
        !stored.contains(&*f.response_key)
            && merged["data"][&*f.response_key]
                .get("ok")
                .and_then(Value::as_bool)
                == Some(false)
    });
    let class = if settled_ok && !refused {
        Class::OK
    } else {
        Class {
            verdict: Verdict::Permanent,
            kind: Kind::ItemNotOk,
            ..Class::OK
        }
    };
    let mut out = Response::from_parts(parts, ResponseBody::full(Bytes::from(merged.to_string())));
    out.headers_mut().remove(http::header::CONTENT_LENGTH);
    out.headers_mut()
        .insert(&X_SIDECAR_SPOOLED, HeaderValue::from_static("partial"));
    out.extensions_mut().insert(class);
    out
}

// === joined replays ===

/// Headers that differ from one request of a client to the next and say
/// nothing about who writes: entries that differ only in these may share
/// one replayed request.
const PER_REQUEST: &[&str] = &[
    "x-request-id",
    "content-length",
    "traceparent",
    "tracestate",
    "baggage",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
    "date",
];

/// An entry that can share a replayed request: one plain field of the
/// kind the preset lets the worker join (LiteralAI's step writes), and what must be equal for entries to be joined (route, method,
/// path, and the headers that say who writes: credentials, client, env).
#[derive(Debug)]
pub(super) struct Joinable {
    pub(super) batch: Batch,
    pub(super) group: Vec<u8>,
}

/// Whether `entry` can be joined with others (see [`Joinable`]).
pub(super) fn joinable(entry: &super::store::Entry, field: Option<&str>) -> Option<Joinable> {
    let field = field?;
    if entry.method != "POST" {
        return None;
    }
    let batch = Batch::parse(&entry.body)?;
    if batch.len() != 1 || batch.field_names().next() != Some(field) {
        return None;
    }
    let decoded = record::decode_headers(&entry.headers);
    let mut headers: Vec<(&str, &[u8])> = decoded
        .iter()
        .filter(|(n, _)| !PER_REQUEST.contains(&n.as_str()))
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    headers.sort();
    let mut group = Vec::with_capacity(entry.headers.len() + 64);
    for part in [entry.route.as_bytes(), entry.path.as_bytes()] {
        group.extend_from_slice(part);
        group.push(0);
    }
    for (n, v) in headers {
        group.extend_from_slice(n.as_bytes());
        group.push(0);
        group.extend_from_slice(v);
        group.push(0);
    }
    Some(Joinable { batch, group })
}
