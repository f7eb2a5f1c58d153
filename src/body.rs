//! Request and response bodies as they travel through the stack.
//!
//! A body is either held whole in memory (cheap to replay: cloning shares
//! the bytes) or streamed from the peer with a byte limit enforced as it
//! flows. Small request bodies are read whole so a failed attempt can be
//! replayed; a body over the replay cap streams after the part already read,
//! so a 100 MB upload passes with bounded memory.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use std::sync::Arc;

use crate::error::{BadUpstreamResponse, BodyTooLarge, ClientBodyError, Error, UpstreamBodyError};

/// A request body on its way to the upstream.
///
/// Small on purpose: every request is moved through the layers by value,
/// and hyper's client keeps a block of 32 requests per upstream connection
/// in its dispatch channel, so the rare parts (trailers, a streamed body)
/// are boxed.
#[derive(Debug)]
pub enum RequestBody {
    /// Held whole; replayable.
    Full {
        /// The bytes, taken when sent.
        data: Option<Bytes>,
        /// Trailers, if the client sent any.
        trailers: Option<Box<HeaderMap>>,
    },
    /// Streamed from the client after an already-read prefix.
    Stream(Box<Streaming>),
}

/// The state of a streamed request body.
#[derive(Debug)]
pub struct Streaming {
    /// Bytes read before deciding to stream.
    prefix: Option<Bytes>,
    /// The rest of the client's body.
    inner: Incoming,
    /// Bytes seen so far, the prefix included.
    seen: u64,
    /// Limit on the total.
    limit: u64,
}

impl RequestBody {
    /// A whole body.
    pub fn full(data: Bytes) -> Self {
        RequestBody::Full {
            data: (!data.is_empty()).then_some(data),
            trailers: None,
        }
    }

    /// A copy for a replay, when the body is held whole.
    pub fn try_clone(&self) -> Option<Self> {
        match self {
            RequestBody::Full { data, trailers } => Some(RequestBody::Full {
                data: data.clone(),
                trailers: trailers.clone(),
            }),
            RequestBody::Stream(_) => None,
        }
    }

    /// The whole body's bytes, when held whole.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            RequestBody::Full { data, .. } => Some(data.as_deref().unwrap_or(&[])),
            RequestBody::Stream(_) => None,
        }
    }

    /// The whole body, shared (no copy), when held whole.
    pub fn full_bytes(&self) -> Option<Bytes> {
        match self {
            RequestBody::Full { data, .. } => Some(data.clone().unwrap_or_default()),
            RequestBody::Stream(_) => None,
        }
    }

    /// Whether a whole body carries trailers.
    pub fn has_trailers(&self) -> bool {
        matches!(
            self,
            RequestBody::Full {
                trailers: Some(_),
                ..
            }
        )
    }

    /// Read a client's body: whole if it ends within `keep` bytes, otherwise
    /// as a stream; fail with [`BodyTooLarge`] past `limit` bytes.
    pub async fn read(
        mut incoming: Incoming,
        content_length: Option<u64>,
        keep: u64,
        limit: u64,
    ) -> Result<Self, Error> {
        if content_length.is_some_and(|n| n > limit) {
            return Err(Box::new(BodyTooLarge { limit }));
        }
        if content_length == Some(0) || incoming.is_end_stream() {
            return Ok(RequestBody::Full {
                data: None,
                trailers: None,
            });
        }
        if content_length.is_some_and(|n| n > keep) {
            return Ok(RequestBody::Stream(Box::new(Streaming {
                prefix: None,
                inner: incoming,
                seen: 0,
                limit,
            })));
        }
        let p = read_prefix(&mut incoming, keep, limit, content_length)
            .await
            .map_err(|e| match e {
                ReadError::Body(e) => Box::new(ClientBodyError(e)) as Error,
                ReadError::TooLarge => Box::new(BodyTooLarge { limit }),
            })?;
        if p.complete {
            return Ok(RequestBody::Full {
                data: p.data,
                trailers: p.trailers.map(Box::new),
            });
        }
        Ok(RequestBody::Stream(Box::new(Streaming {
            prefix: p.data,
            inner: incoming,
            seen: p.seen,
            limit,
        })))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.get_mut() {
            RequestBody::Full { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(*t))))
            }
            RequestBody::Stream(stream) => {
                let Streaming {
                    prefix,
                    inner,
                    seen,
                    limit,
                } = &mut **stream;
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                match Pin::new(inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(d) = frame.data_ref() {
                            *seen += d.len() as u64;
                            if *seen > *limit {
                                return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                                    limit: *limit,
                                }))));
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        Poll::Ready(Some(Err(Box::new(ClientBodyError(e)))))
                    }
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Full { data, trailers } => data.is_none() && trailers.is_none(),
            RequestBody::Stream(s) => s.prefix.is_none() && s.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Full { data, trailers } => full_size_hint(data, trailers.is_some()),
            RequestBody::Stream(s) => prefixed_size_hint(&s.prefix, &s.inner),
        }
    }
}

/// A response body on its way to the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// Held whole (a buffered GraphQL answer or one the sidecar wrote).
    Full {
        /// The bytes, taken when sent.
        data: Option<Bytes>,
        /// Trailers from the upstream, if any.
        trailers: Option<HeaderMap>,
    },
    /// Streamed from the upstream after an already-read prefix.
    Stream {
        /// Bytes read before deciding to stream.
        prefix: Option<Bytes>,
        /// The rest of the upstream's body.
        inner: Incoming,
        /// The upstream connection, returned to the pool when the body ends.
        lease: Option<Lease>,
    },
}

impl ResponseBody {
    /// A whole body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        ResponseBody::Full {
            data: (!data.is_empty()).then_some(data),
            trailers: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        ResponseBody::Full {
            data: None,
            trailers: None,
        }
    }

    /// The upstream's body, streamed.
    pub fn stream(inner: Incoming) -> Self {
        ResponseBody::Stream {
            prefix: None,
            inner,
            lease: None,
        }
    }

    /// Tie the upstream connection this body is read from to the body:
    /// a body held whole lets it go at once.
    pub fn with_lease(mut self, lease: Option<Lease>) -> Self {
        if let ResponseBody::Stream { lease: slot, .. } = &mut self {
            *slot = lease;
        }
        self
    }

    /// The bytes, when held whole.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            ResponseBody::Full { data, .. } => Some(data.as_deref().unwrap_or(&[])),
            ResponseBody::Stream { .. } => None,
        }
    }

    /// Read the upstream's body whole if it ends within `max` bytes;
    /// otherwise keep what was read and stream the rest.
    pub async fn buffer(mut inner: Incoming, max: u64) -> Result<Self, Error> {
        let p = read_prefix(&mut inner, max, u64::MAX, None)
            .await
            .map_err(|e| match e {
                ReadError::Body(e) => Box::new(UpstreamBodyError(e)) as Error,
                ReadError::TooLarge => Box::new(BadUpstreamResponse("body too large".into())),
            })?;
        if p.complete {
            return Ok(ResponseBody::Full {
                data: p.data,
                trailers: p.trailers,
            });
        }
        Ok(ResponseBody::Stream {
            prefix: p.data,
            inner,
            lease: None,
        })
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.get_mut() {
            ResponseBody::Full { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            ResponseBody::Stream {
                prefix,
                inner,
                lease,
            } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                match Pin::new(inner).poll_frame(cx) {
                    Poll::Ready(Some(Err(e))) => {
                        Poll::Ready(Some(Err(Box::new(UpstreamBodyError(e)))))
                    }
                    Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                    Poll::Ready(None) => {
                        // The exchange is over: the connection may serve
                        // the next request without waiting for this body
                        // to be dropped.
                        drop(lease.take());
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full { data, trailers } => data.is_none() && trailers.is_none(),
            ResponseBody::Stream { prefix, inner, .. } => prefix.is_none() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full { data, trailers } => full_size_hint(data, trailers.is_some()),
            ResponseBody::Stream { prefix, inner, .. } => prefixed_size_hint(prefix, inner),
        }
    }
}

/// What [`read_prefix`] found.
struct Prefix {
    /// The bytes read (one frame's bytes without a copy in the common case).
    data: Option<Bytes>,
    /// Trailers, if the body ended with some.
    trailers: Option<HeaderMap>,
    /// Whether the body ended within the bound.
    complete: bool,
    /// Bytes read.
    seen: u64,
}

/// Read `body` until it ends or more than `keep` bytes were read; fail with
/// `too_large` past `limit` bytes.
async fn read_prefix(
    body: &mut Incoming,
    keep: u64,
    limit: u64,
    capacity_hint: Option<u64>,
) -> Result<Prefix, ReadError> {
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut seen = 0u64;
    let mut trailers = None;
    let mut complete = true;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        let Some(frame) = frame else { break };
        match frame.map_err(ReadError::Body)?.into_data() {
            Ok(data) => {
                seen += data.len() as u64;
                if seen > limit {
                    return Err(ReadError::TooLarge);
                }
                // The common case is one frame: keep it without a copy.
                match (&mut first, &mut buf) {
                    (None, None) => first = Some(data),
                    (Some(f), None) => {
                        let cap = capacity_hint.unwrap_or(seen).min(keep.saturating_add(1));
                        let mut b = BytesMut::with_capacity(cap.max(seen) as usize);
                        b.extend_from_slice(f);
                        b.extend_from_slice(&data);
                        first = None;
                        buf = Some(b);
                    }
                    (_, Some(b)) => b.extend_from_slice(&data),
                }
                if seen > keep {
                    complete = false;
                    break;
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    let data = match buf {
        Some(b) => Some(b.freeze()),
        None => first,
    };
    Ok(Prefix {
        data,
        trailers,
        complete,
        seen,
    })
}

enum ReadError {
    Body(hyper::Error),
    TooLarge,
}

/// Exact for a plain body; open-ended when trailers follow, so HTTP/1 uses
/// chunked framing (the only one that can carry them).
fn full_size_hint(data: &Option<Bytes>, trailers: bool) -> SizeHint {
    let len = data.as_ref().map_or(0, |d| d.len() as u64);
    if trailers {
        let mut h = SizeHint::new();
        h.set_lower(len);
        h
    } else {
        SizeHint::with_exact(len)
    }
}

fn prefixed_size_hint(prefix: &Option<Bytes>, inner: &Incoming) -> SizeHint {
    let p = prefix.as_ref().map_or(0, |d| d.len() as u64);
    let h = inner.size_hint();
    let mut out = SizeHint::new();
    out.set_lower(h.lower() + p);
    if let Some(u) = h.upper() {
        out.set_upper(u + p);
    }
    out
}

/// An HTTP/1 connection lent to one exchange. Dropping it — once the
/// response body has been read, or abandoned — returns the connection to
/// the pool if it can take another request.
pub struct Lease {
    tx: Option<http1::SendRequest<RequestBody>>,
    pool: Arc<dyn Returns>,
}

impl Lease {
    /// Lend `tx`; `pool` takes it back when the lease is dropped.
    pub(crate) fn new(tx: http1::SendRequest<RequestBody>, pool: Arc<dyn Returns>) -> Self {
        Lease { tx: Some(tx), pool }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}

/// The part of the pool a [`Lease`] needs, without the connector's type.
/// Defined here, beside the body that holds the lease, so the pool depends
/// on bodies and never the other way round.
pub(crate) trait Returns: Send + Sync {
    /// Take the connection back once the exchange that held it is over.
    fn put(self: Arc<Self>, tx: http1::SendRequest<RequestBody>);
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.pool.clone().put(tx);
        }
    }
}
