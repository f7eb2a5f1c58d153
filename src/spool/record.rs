//! How a request is written into the spool and read back, and the answer
//! the app gets while its write waits.
//!
//! Headers are stored as `name NUL value NUL` pairs: neither a header name
//! nor a header value can contain NUL, so the encoding needs no escaping and
//! keeps non-UTF-8 values byte for byte.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;
use crate::graphql::Operation;

/// `x-sidecar-spooled: true` marks an answer given for a spooled write.
pub static X_SIDECAR_SPOOLED: HeaderName = HeaderName::from_static("x-sidecar-spooled");

/// The message in each item of a spooled write's answer.
pub const SPOOLED_MESSAGE: &str = "stored by datalayer-sidecar; delivery to the backend is pending";

/// Encode `headers`, leaving out those in `skip`.
pub fn encode_headers(headers: &HeaderMap, skip: &[HeaderName]) -> Vec<u8> {
    // Sized once, for every header: a spooling write keeps this while it
    // is delivered, and the few skipped ones (host, credentials) are short.
    let len = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 2)
        .sum();
    let mut out = Vec::with_capacity(len);
    for (name, value) in headers {
        if skip.contains(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// Decode what [`encode_headers`] wrote; malformed pairs are skipped.
pub fn decode_headers(data: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    let mut parts = data.split(|b| *b == 0);
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    map
}

/// The answer for a spooled GraphQL write: what the SDK expects from a
/// successful call, one entry per alias of the request. Each alias gets the
/// fields its selection asks for: `ok` is `true`, `message` says the write
/// is stored, a field named like one of the root field's arguments echoes
/// the value sent (`id`, `name`, `metadata`, `tags` of an `upsertThread`),
/// anything else is `null`; a field selected with no sub-fields is `true`.
/// So `AddStep` gets `{"data":{"step0":{"ok":true,"message":...}}}` and
/// `DeleteThread` gets `{"data":{"deleteThread":{"id":"<its id>"}}}`.
pub fn spooled_response(op: &Operation, body: &[u8]) -> Response<ResponseBody> {
    use serde_json::Value;
    // `AddStep` selects only `ok` and `message`: no argument to echo, so the
    // body is not parsed again.
    let echoes = op.root_fields.iter().any(|f| {
        f.selection
            .iter()
            .any(|(_, name)| !matches!(&**name, "ok" | "message") && f.arg(name).is_some())
    });
    let args = if echoes {
        crate::graphql::resolved_args(body, op)
    } else {
        Vec::new()
    };
    let mut data = serde_json::Map::with_capacity(op.root_fields.len());
    for (i, field) in op.root_fields.iter().enumerate() {
        let value = if field.selection.is_empty() {
            Value::Bool(true)
        } else {
            let sent = args.get(i).map(Vec::as_slice).unwrap_or_default();
            let mut obj = serde_json::Map::with_capacity(field.selection.len());
            for (key, name) in field.selection.iter() {
                let v = match &**name {
                    "ok" => Value::Bool(true),
                    "message" => Value::String(SPOOLED_MESSAGE.to_string()),
                    other => sent
                        .iter()
                        .find(|(a, _)| &**a == other)
                        .map_or(Value::Null, |(_, v)| v.clone()),
                };
                obj.insert(key.to_string(), v);
            }
            Value::Object(obj)
        };
        data.insert(field.response_key.to_string(), value);
    }
    let body = serde_json::json!({ "data": data }).to_string();
    let mut resp = Response::new(ResponseBody::full(Bytes::from(body)));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(&X_SIDECAR_SPOOLED, HeaderValue::from_static("true"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_skip_secrets() {
        let mut h = HeaderMap::new();
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        h.insert("x-api-key", HeaderValue::from_static("secret"));
        h.insert("x-bin", HeaderValue::from_bytes(b"\xff\x80ok").unwrap());
        let enc = encode_headers(&h, &[HeaderName::from_static("x-api-key")]);
        let back = decode_headers(&enc);
        assert_eq!(back.get_all("x-multi").iter().count(), 2);
        assert!(back.get("x-api-key").is_none());
        assert_eq!(back["x-bin"].as_bytes(), b"\xff\x80ok");
    }

    #[test]
    fn spooled_answer_uses_the_request_aliases() {
        let body = r#"{"query":"mutation AddStep { step0: ingestStep(id: \"a\") { ok message } step1: ingestStep(id: \"b\") { ok message } }"}"#;
        let op = crate::graphql::operation_of(body.as_bytes()).unwrap();
        let resp = spooled_response(&op, body.as_bytes());
        assert_eq!(resp.headers()["x-sidecar-spooled"], "true");
        let v: serde_json::Value = serde_json::from_slice(resp.body().bytes().unwrap()).unwrap();
        assert_eq!(v["data"]["step0"]["ok"], true);
        assert_eq!(v["data"]["step1"]["ok"], true);
        assert_eq!(v["data"].as_object().unwrap().len(), 2);
    }

    #[test]
    fn spooled_thread_upsert_echoes_what_was_sent() {
        // The SDK's UpsertThread, with the fields it left out missing.
        let body = serde_json::json!({
            "query": "mutation UpsertThread($id: String!, $name: String, $metadata: Json, $participantId: String, $tags: [String!]) { upsertThread(id: $id name: $name metadata: $metadata participantId: $participantId tags: $tags) { id name metadata tags createdAt participant { id identifier metadata } } }",
            "variables": {"id": "t-1", "name": "First question", "participantId": "u-1"}
        })
        .to_string();
        let op = crate::graphql::operation_of(body.as_bytes()).unwrap();
        let resp = spooled_response(&op, body.as_bytes());
        let v: serde_json::Value = serde_json::from_slice(resp.body().bytes().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"data": {"upsertThread": {
                "id": "t-1", "name": "First question", "metadata": null,
                "tags": null, "createdAt": null, "participant": null
            }}})
        );
        let body = r#"{"query":"mutation DeleteThread($thread_id: String!) { deleteThread(id: $thread_id) { id } }","variables":{"thread_id":"t-9"}}"#;
        let op = crate::graphql::operation_of(body.as_bytes()).unwrap();
        let resp = spooled_response(&op, body.as_bytes());
        let v: serde_json::Value = serde_json::from_slice(resp.body().bytes().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"data": {"deleteThread": {"id": "t-9"}}})
        );
    }
}
