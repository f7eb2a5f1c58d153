//! The local backend for `bench/spool.sh`: answers every GraphQL write the
//! way LiteralAI does — one `{"ok": true, "message": ...}` per alias of the
//! request, whatever its aliases — from memory, on one thread. nginx's
//! fixed answer (`step0` only) cannot answer a batched replay of fifty
//! aliases, and an alias left unanswered is sent again by the sidecar.
//!
//! Counts requests and step aliases; `GET /stats` returns them as JSON, so
//! a benchmark can report upstream requests per delivered step.
//!
//! ```text
//! literal_backend 127.0.0.1:8080
//! ```
//! Not a product: a benchmark peer, kept out of the sidecar's binary.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[global_allocator]
static GLOBAL: datalayer_sidecar::alloc::MiMalloc = datalayer_sidecar::alloc::MiMalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    steps: AtomicU64,
}

fn answer(body: &[u8], counts: &Counts) -> Response<Full<Bytes>> {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let mut out = String::from("{\"data\":{");
    if let Ok(op) = datalayer_sidecar::graphql::operation_of(body) {
        for (i, f) in op.root_fields.iter().enumerate() {
            if &*f.name == "ingestStep" {
                counts.steps.fetch_add(1, Ordering::Relaxed);
            }
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(&f.response_key);
            out.push_str("\":{\"ok\":true,\"message\":\"Step ingested\"}");
        }
    }
    out.push_str("}}");
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn main() -> Result<(), BoxError> {
    let listen: SocketAddr = std::env::args()
        .nth(1)
        .ok_or("usage: literal_backend LISTEN_ADDR")?
        .parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let counts = Arc::new(Counts::default());
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let counts = counts.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let counts = counts.clone();
                    async move {
                        if req.uri().path() == "/stats" {
                            let s = format!(
                                "{{\"requests\":{},\"steps\":{}}}",
                                counts.requests.load(Ordering::Relaxed),
                                counts.steps.load(Ordering::Relaxed)
                            );
                            return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(s))));
                        }
                        let body = match req.into_body().collect().await {
                            Ok(b) => b.to_bytes(),
                            Err(_) => Bytes::new(),
                        };
                        Ok(answer(&body, &counts))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
