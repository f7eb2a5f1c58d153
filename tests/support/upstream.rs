//! A scriptable fake upstream on 127.0.0.1:0: records every request and
//! answers with what the test's handler returns, faults included.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
    /// When the request's body had fully arrived.
    pub at: tokio::time::Instant,
    /// The same moment, on the wall clock (for HTTP-date checks).
    pub wall: std::time::SystemTime,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What the upstream does with a request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A complete answer.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// 200 with the request body as the response body.
    Echo,
    /// Close the connection without answering.
    Close,
    /// Send the head and the first bytes of a longer body, then break off.
    AbortMidBody { status: u16, first: Bytes },
    /// Never answer.
    Hang,
    /// Wait, then reply.
    Delay(Duration, Box<Reply>),
    /// A large streamed body of `chunks` × `chunk_size` bytes.
    Stream { chunks: usize, chunk_size: usize },
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply::Full {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            trailers: None,
        }
    }

    pub fn json(status: u16, value: serde_json::Value) -> Reply {
        Reply::Full {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(value.to_string()),
            trailers: None,
        }
    }

    pub fn text(status: u16, body: &str) -> Reply {
        Reply::Full {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: Bytes::from(body.to_string()),
            trailers: None,
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        if let Reply::Full { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }

    pub fn delayed(self, d: Duration) -> Reply {
        Reply::Delay(d, Box::new(self))
    }
}

type Handler = Arc<dyn Fn(&Recorded, usize) -> Reply + Send + Sync>;

struct State {
    handler: Handler,
    requests: Mutex<Vec<Recorded>>,
    hits: AtomicUsize,
    connections: AtomicUsize,
    consumed: Mutex<Vec<(u64, u64)>>,
}

/// The running fake upstream.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        // Stop accepting and drop every open connection, like a dead process.
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

/// FNV-1a over a stream of chunks: cheap, order-sensitive, no buffering.
pub fn fnv1a(state: u64, data: &[u8]) -> u64 {
    let mut h = state;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

impl FakeUpstream {
    /// Start on a fresh loopback port.
    pub async fn start(
        handler: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, handler, None)
    }

    /// Start with TLS (and ALPN h2 + http/1.1).
    pub async fn start_tls(
        tls: Arc<rustls::ServerConfig>,
        handler: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, handler, Some(tls))
    }

    /// Start on a given listener (to come back on the same port).
    pub fn start_on(
        listener: TcpListener,
        handler: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            handler: Arc::new(handler),
            requests: Mutex::new(Vec::new()),
            hits: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            consumed: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                let acceptor = acceptor.clone();
                let mut stopped = stopped.clone();
                let conn = async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { handle(st, req).await }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acc) => {
                            if let Ok(tls) = acc.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                };
                tokio::spawn(async move {
                    tokio::select! {
                        () = conn => {}
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        FakeUpstream {
            addr,
            state,
            task,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// (bytes, fnv1a) of every body received on `/consume`.
    pub fn consumed(&self) -> Vec<(u64, u64)> {
        self.state.consumed.lock().unwrap().clone()
    }

    /// Stop listening (the port then refuses connections) and return it.
    pub fn stop(self) -> SocketAddr {
        self.addr
    }
}

/// Bind `addr` again once a stopped upstream's listener is gone (its task
/// is aborted, not joined, so the port frees a moment later).
pub async fn rebind(addr: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot bind {addr} again");
}

#[derive(Debug)]
pub struct Broken;

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted failure")
    }
}

impl std::error::Error for Broken {}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Result<Response<ReplyBody>, Broken> {
    let (parts, mut body) = req.into_parts();
    if parts.uri.path() == "/consume" {
        let (mut n, mut h) = (0u64, FNV_START);
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return Err(Broken) };
            if let Some(d) = frame.data_ref() {
                n += d.len() as u64;
                h = fnv1a(h, d);
            }
        }
        st.consumed.lock().unwrap().push((n, h));
        st.hits.fetch_add(1, Ordering::SeqCst);
        let body = serde_json::json!({"bytes": n, "fnv1a": h}).to_string();
        return Ok(Response::new(ReplyBody::full(Bytes::from(body), None)));
    }
    let collected = body.collect().await.map_err(|_| Broken)?;
    let trailers = collected.trailers().cloned();
    let rec = Recorded {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
        at: tokio::time::Instant::now(),
        wall: std::time::SystemTime::now(),
    };
    let n = st.hits.fetch_add(1, Ordering::SeqCst);
    let reply = (st.handler)(&rec, n);
    st.requests.lock().unwrap().push(rec.clone());
    respond(reply, &rec).await
}

fn respond(
    reply: Reply,
    rec: &Recorded,
) -> Pin<Box<dyn std::future::Future<Output = Result<Response<ReplyBody>, Broken>> + Send + '_>> {
    Box::pin(async move {
        match reply {
            Reply::Full {
                status,
                headers,
                body,
                trailers,
            } => {
                let mut resp = Response::new(ReplyBody::full(body, trailers));
                *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                for (k, v) in headers {
                    resp.headers_mut().append(
                        HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        HeaderValue::from_str(&v).unwrap(),
                    );
                }
                Ok(resp)
            }
            Reply::Echo => Ok(Response::new(ReplyBody::full(rec.body.clone(), None))),
            Reply::Close => Err(Broken),
            Reply::AbortMidBody { status, first } => {
                let mut resp = Response::new(ReplyBody::Abort { first: Some(first) });
                *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                resp.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/json"));
                Ok(resp)
            }
            Reply::Hang => {
                std::future::pending::<()>().await;
                Err(Broken)
            }
            Reply::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                respond(*inner, rec).await
            }
            Reply::Stream { chunks, chunk_size } => Ok(Response::new(ReplyBody::Gen {
                left: chunks,
                chunk: Bytes::from(vec![b'x'; chunk_size]),
            })),
        }
    })
}

/// Response bodies of the fake upstream.
pub enum ReplyBody {
    Full {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Abort {
        first: Option<Bytes>,
    },
    Gen {
        left: usize,
        chunk: Bytes,
    },
}

impl ReplyBody {
    fn full(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        ReplyBody::Full {
            data: Some(data),
            trailers,
        }
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = Broken;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Broken>>> {
        match self.get_mut() {
            ReplyBody::Full { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            ReplyBody::Abort { first } => match first.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => Poll::Ready(Some(Err(Broken))),
            },
            ReplyBody::Gen { left, chunk } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                *left -= 1;
                Poll::Ready(Some(Ok(Frame::data(chunk.clone()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReplyBody::Full { data, trailers } => data.is_none() && trailers.is_none(),
            ReplyBody::Abort { .. } => false,
            ReplyBody::Gen { left, .. } => *left == 0,
        }
    }
}
