//! The one upstream every request goes to: its URL, parsed and checked
//! once. The sidecar forwards to this origin only (it is never an open
//! proxy), so the checks refuse what would make the destination ambiguous
//! or leak a secret: no credentials in the URL, no query string.

use http::uri::{Authority, PathAndQuery, Scheme, Uri};

use crate::error::InvalidParam;

/// The upstream, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host and port requests go to.
    pub authority: Authority,
    /// Path prefix prepended to every request path (no trailing slash).
    pub base_path: String,
}

impl UpstreamTarget {
    /// Parse and check an upstream URL.
    pub fn parse(url: &str) -> Result<Self, InvalidParam> {
        let key = "upstream.url";
        if url.is_empty() {
            return Err(InvalidParam::new(
                key,
                "is required: the URL of the LiteralAI-compatible backend (e.g. https://backend.example.com)",
            ));
        }
        let uri: Uri = url
            .parse()
            .map_err(|e| InvalidParam::new(key, format!("`{url}` is not a URL: {e}")))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| {
            InvalidParam::new(
                key,
                format!("`{url}` has no scheme; write http://{url} or https://{url}"),
            )
        })?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(InvalidParam::new(
                key,
                format!("scheme `{scheme}` is not supported; use http or https"),
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| InvalidParam::new(key, format!("`{url}` has no host")))?;
        if authority.as_str().contains('@') {
            return Err(InvalidParam::new(
                key,
                "credentials in the URL are not allowed (they would be logged and sent on every request)",
            ));
        }
        if authority.host().is_empty() {
            return Err(InvalidParam::new(key, format!("`{url}` has no host")));
        }
        let pq = uri.path_and_query().map(PathAndQuery::as_str).unwrap_or("");
        if pq.contains('?') {
            return Err(InvalidParam::new(key, "a query string is not allowed"));
        }
        let base_path = pq.trim_end_matches('/').to_string();
        Ok(UpstreamTarget {
            scheme,
            authority,
            base_path,
        })
    }
}
