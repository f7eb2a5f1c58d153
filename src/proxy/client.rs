//! The upstream client and the innermost service of the stack.
//!
//! hyper-util's TCP connector (connect timeout, keep-alive, no delay) under
//! hyper-rustls (TLS verified against the configured roots plus an optional
//! extra CA file, HTTP/2 when the upstream offers it through ALPN), pooled by
//! [`crate::proxy::pool`]. DNS failures are tagged on the way out of the
//! resolver so [`crate::classify`] can tell them from TCP failures.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{self, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use pki_types::CertificateDer;
use pki_types::pem::PemObject;
use tower::Service;

use crate::body::{RequestBody, ResponseBody};
use crate::classify::DnsError;
use crate::error::Error;
use crate::exchange;
use crate::proxy::UpstreamTarget;
use crate::proxy::forward::strip_hop_by_hop;
use crate::proxy::pool::{Pool, PoolConfig};

/// Which root certificates verify the upstream's TLS certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsRoots {
    /// Mozilla's roots compiled into the binary (works in a scratch image).
    Webpki,
    /// The operating system's trust store.
    Platform,
}

/// The upstream's settings, checked by the config (`[upstream]`). Equal
/// settings across a reload keep the pool and its connections.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamParams {
    /// The one origin.
    pub target: UpstreamTarget,
    /// TCP connect (and TLS handshake) must finish within this time.
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this time.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept in the pool.
    pub pool_max_idle: usize,
    /// Requests in flight to the upstream at once.
    pub max_concurrent_requests: usize,
    /// Offer HTTP/2 through ALPN on TLS connections.
    pub http2: bool,
    /// Root certificates trusted for the upstream.
    pub tls_roots: TlsRoots,
    /// Extra PEM CA certificates.
    pub ca_file: Option<PathBuf>,
}

/// Opens TCP (and TLS) connections to the upstream.
pub type Connector = HttpsConnector<HttpConnector<Resolver>>;

/// The pooled HTTP(S) client used for every upstream request.
pub type HttpClient = Pool<Connector>;

/// The system resolver, with failures tagged as [`DnsError`].
#[derive(Debug, Clone)]
pub struct Resolver {
    inner: GaiResolver,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver {
            inner: GaiResolver::new(),
        }
    }
}

impl Service<Name> for Resolver {
    type Response = <GaiResolver as Service<Name>>::Response;
    type Error = DnsError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, DnsError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut task::Context<'_>) -> Poll<Result<(), DnsError>> {
        self.inner.poll_ready(cx).map_err(DnsError)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let fut = self.inner.call(name);
        Box::pin(async move { fut.await.map_err(DnsError) })
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The extra CA file could not be used.
    #[error("upstream.ca_file {path}: {message}")]
    CaFile {
        /// The configured path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// No root certificates could be loaded.
    #[error("upstream.tls_roots: {0}")]
    Roots(String),
    /// The upstream URL does not make an origin to connect to.
    #[error("upstream.url: {0}")]
    Origin(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

fn root_store(cfg: &UpstreamParams) -> Result<rustls::RootCertStore, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    match cfg.tls_roots {
        TlsRoots::Webpki => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        TlsRoots::Platform => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 && cfg.ca_file.is_none() {
                return Err(ClientError::Roots(format!(
                    "no usable certificates in the platform store ({} errors)",
                    found.errors.len()
                )));
            }
        }
    }
    if let Some(path) = &cfg.ca_file {
        let fail = |message: String| ClientError::CaFile {
            path: path.display().to_string(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| fail(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| fail(e.to_string()))?;
        if certs.is_empty() {
            return Err(fail("no PEM certificates found".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| fail(e.to_string()))?;
        }
    }
    Ok(roots)
}

/// Build the pooled client for the upstream.
pub fn build(cfg: &UpstreamParams) -> Result<HttpClient, ClientError> {
    let target = &cfg.target;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(cfg)?)
        .with_no_client_auth();
    let mut http = HttpConnector::new_with_resolver(Resolver::default());
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1();
    let https = if cfg.http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.wrap_connector(http)
    };
    let origin = http::Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|e| ClientError::Origin(e.to_string()))?;
    Ok(Pool::new(
        https,
        origin,
        PoolConfig {
            idle_timeout: cfg.pool_idle_timeout,
            max_idle: cfg.pool_max_idle,
        },
    ))
}

/// Sends one attempt upstream. For GraphQL requests a successful response
/// body is read (up to a bound) so it can be classified and replaced.
#[derive(Debug, Clone)]
pub struct Upstream {
    // The pool is one Arc inside: cloning it per request (and per retry, as
    // the stack is cloned) is one reference count.
    client: HttpClient,
    max_graphql_response: u64,
}

impl Upstream {
    /// Send through `client`, buffering GraphQL answers up to `max` bytes.
    pub fn new(client: HttpClient, max_graphql_response: u64) -> Self {
        Upstream {
            client,
            max_graphql_response,
        }
    }

    /// The pool, so a reload that keeps the upstream's settings keeps its
    /// connections.
    pub fn client(&self) -> &HttpClient {
        &self.client
    }
}

impl Service<Request<RequestBody>> for Upstream {
    type Response = Response<ResponseBody>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut task::Context<'_>) -> Poll<Result<(), Error>> {
        // The pool opens a connection when none is idle: always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let buffer = exchange::of(&req)
            .and_then(|e| e.routed())
            .is_some_and(|r| r.operation.is_some());
        let client = self.client.clone();
        let max = self.max_graphql_response;
        Box::pin(async move {
            let (resp, lease) = client.send(req).await?;
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let body = if buffer && parts.status.is_success() {
                // A body read whole frees the connection here (the lease
                // drops); one streamed on keeps it until it ends.
                ResponseBody::buffer(body, max).await?.with_lease(lease)
            } else {
                ResponseBody::stream(body).with_lease(lease)
            };
            Ok(Response::from_parts(parts, body))
        })
    }
}
