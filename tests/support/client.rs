//! A plain HTTP/1.1 test client and request bodies for it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A response, fully read.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Request bodies: whole, chunked with trailers, or generated.
pub enum TestBody {
    Full(Option<Bytes>),
    Chunks(VecDeque<Bytes>, Option<HeaderMap>),
    /// `left` chunks of `size` deterministic bytes (see [`gen_chunk`]).
    Gen {
        left: u64,
        size: usize,
        n: u64,
    },
}

impl TestBody {
    pub fn empty() -> Self {
        TestBody::Full(None)
    }

    pub fn full(b: impl Into<Bytes>) -> Self {
        TestBody::Full(Some(b.into()))
    }

    pub fn chunks(chunks: Vec<Bytes>, trailers: Option<HeaderMap>) -> Self {
        TestBody::Chunks(chunks.into(), trailers)
    }
}

/// The `n`-th chunk of a generated body: deterministic pseudo-random bytes.
pub fn gen_chunk(n: u64, size: usize) -> Bytes {
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(size);
    while v.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(size);
    Bytes::from(v)
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            TestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            TestBody::Chunks(chunks, trailers) => match chunks.pop_front() {
                Some(c) => Poll::Ready(Some(Ok(Frame::data(c)))),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
            },
            TestBody::Gen { left, size, n } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                *left -= 1;
                let c = gen_chunk(*n, *size);
                *n += 1;
                Poll::Ready(Some(Ok(Frame::data(c))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            TestBody::Full(b) => b.is_none(),
            TestBody::Chunks(c, t) => c.is_empty() && t.is_none(),
            TestBody::Gen { left, .. } => *left == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            TestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            // Unknown length: sent chunked.
            _ => SizeHint::default(),
        }
    }
}

pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Send `req` (its URI may be a bare path) to `addr` and read the answer.
pub async fn send(addr: SocketAddr, mut req: Request<TestBody>) -> Answer {
    if req.uri().authority().is_none() {
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        *req.uri_mut() = format!("http://{addr}{pq}").parse().unwrap();
    }
    let resp = client().request(req).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("response body failed");
    let trailers = collected.trailers().cloned();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// The status of `GET path`, or `None` when nothing answers.
pub async fn try_get(addr: SocketAddr, path: &str) -> Option<u16> {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(TestBody::empty())
        .ok()?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(2), client().request(req))
        .await
        .ok()?
        .ok()?;
    Some(resp.status().as_u16())
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(addr, Request::get(path).body(TestBody::empty()).unwrap()).await
}

pub async fn post_json_to(
    addr: SocketAddr,
    path: &str,
    value: &serde_json::Value,
    method: &str,
) -> Answer {
    send(
        addr,
        Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(TestBody::full(value.to_string()))
            .unwrap(),
    )
    .await
}

pub async fn post_json(addr: SocketAddr, path: &str, value: &serde_json::Value) -> Answer {
    send(
        addr,
        Request::post(path)
            .header("content-type", "application/json")
            .body(TestBody::full(value.to_string()))
            .unwrap(),
    )
    .await
}

/// A LiteralAI-style `AddStep` batch writing the given step ids.
pub fn add_step(ids: &[&str]) -> serde_json::Value {
    add_step_with(
        ids.iter()
            .map(|id| (id.to_string(), "hello".to_string()))
            .collect(),
    )
}

/// `AddStep` with (id, output) pairs.
pub fn add_step_with(steps: Vec<(String, String)>) -> serde_json::Value {
    let mut decls = Vec::new();
    let mut fields = Vec::new();
    let mut vars = serde_json::Map::new();
    for (i, (id, output)) in steps.iter().enumerate() {
        decls.push(format!("$id_{i}: String!, $output_{i}: Json"));
        fields.push(format!(
            "step{i}: ingestStep(id: $id_{i}, output: $output_{i}) {{ ok message }}"
        ));
        vars.insert(format!("id_{i}"), serde_json::json!(id));
        vars.insert(
            format!("output_{i}"),
            serde_json::json!({ "content": output }),
        );
    }
    serde_json::json!({
        "query": format!("mutation AddStep({}) {{\n{}\n}}", decls.join(", "), fields.join("\n")),
        "variables": vars,
    })
}

/// The value of the first sample line of `/metrics` starting with `prefix`.
pub fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A create (the backend mints the id), so not idempotent in the preset.
pub fn other_mutation() -> serde_json::Value {
    serde_json::json!({
        "query": "mutation CreateThread($name: String) { createThread(name: $name) { id } }",
        "variables": {"name": "thread-1"}
    })
}

/// The SDK's `UpsertThread` (fields it does not set left out, as it does).
pub fn upsert_thread(id: &str, name: Option<&str>, participant: Option<&str>) -> serde_json::Value {
    let mut vars = serde_json::Map::new();
    vars.insert("id".into(), serde_json::json!(id));
    if let Some(n) = name {
        vars.insert("name".into(), serde_json::json!(n));
    }
    if let Some(p) = participant {
        vars.insert("participantId".into(), serde_json::json!(p));
    }
    serde_json::json!({
        "query": "mutation UpsertThread($id: String!, $name: String, $metadata: Json, $participantId: String, $tags: [String!]) {\n upsertThread(id: $id, name: $name, metadata: $metadata, participantId: $participantId, tags: $tags) {\n id name metadata tags createdAt participant { id identifier metadata }\n }\n}",
        "variables": vars,
    })
}

/// A query (idempotent).
pub fn query() -> serde_json::Value {
    serde_json::json!({"query": "query GetStep($id: String!) { step(id: $id) { id } }", "variables": {"id": "s"}})
}

/// The success answer for an `AddStep` with these aliases.
pub fn steps_ok(n: usize) -> serde_json::Value {
    let mut data = serde_json::Map::new();
    for i in 0..n {
        data.insert(
            format!("step{i}"),
            serde_json::json!({"ok": true, "message": "stored"}),
        );
    }
    serde_json::json!({ "data": data })
}
