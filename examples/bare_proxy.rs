//! The floor for `bench/run.sh`: a plain hyper/hyper-util reverse proxy with
//! none of the sidecar's layers — no body read, no GraphQL, no routes,
//! timeouts, retries, breaker, spool, metrics or access log. Same allocator
//! (mimalloc, through `datalayer_sidecar::alloc`) and runtime (one current-thread tokio runtime) as the sidecar,
//! hyper's HTTP/1 server, hyper-util's pooled client, bodies streamed. What
//! the sidecar costs above this is what its reliability stack costs; what
//! this costs above nginx is what the HTTP library costs.
//!
//! ```text
//! bare_proxy 127.0.0.1:9000 127.0.0.1:8080
//! ```
//! Not a product: a benchmark peer, kept out of the sidecar's binary.

use std::net::SocketAddr;

use http::header::HOST;
use http::{HeaderValue, Request, Uri};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[global_allocator]
static GLOBAL: datalayer_sidecar::alloc::MiMalloc = datalayer_sidecar::alloc::MiMalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: bare_proxy LISTEN_ADDR UPSTREAM_HOST:PORT".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let host = HeaderValue::from_str(&upstream)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build(connector);
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let client = client.clone();
            let host = host.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    let client = client.clone();
                    let uri = format!(
                        "http://{upstream}{}",
                        req.uri().path_and_query().map_or("/", |p| p.as_str())
                    );
                    req.headers_mut().insert(HOST, host.clone());
                    let parsed = uri.parse::<Uri>();
                    async move {
                        // A concrete error type: a boxed one trips rustc's
                        // higher-ranked lifetime check in the spawned task.
                        *req.uri_mut() = parsed.map_err(std::io::Error::other)?;
                        client.request(req).await.map_err(std::io::Error::other)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
