//! What the admin port refuses before any endpoint runs.
//!
//! The admin port listens on loopback, where any page the operator opens in
//! a browser can reach it. Two attacks follow, and two checks stop them:
//!
//! - **DNS rebinding.** A page on `evil.example` has its name made to
//!   resolve to 127.0.0.1 and reads `/config` or `/spool` as if same-origin;
//!   its requests carry `Host: evil.example`. Every endpoint refuses a
//!   `Host` that is not an IP literal, a loopback name (`localhost`,
//!   `*.localhost`) or a name in `admin.allowed_hosts`: 421
//!   `host_not_allowed`. Probes (the kubelet sends the pod's IP), Prometheus
//!   and the CLI send IP literals or `localhost`.
//! - **Cross-site requests that change state.** A page can send a form or a
//!   `fetch` to `POST /reload` without a preflight. Such a request is
//!   refused (403 `cross_site_request`) when it carries a foreign or `null`
//!   `Origin`, a `Sec-Fetch-Site` other than `same-origin` or `none`, or a
//!   body type a form can send (`text/plain`, `application/x-www-form-
//!   urlencoded`, `multipart/form-data`). Browsers send `Origin` on every
//!   cross-origin POST; `curl -X POST` sends none of these and passes.
//!
//! Written here rather than taken from tower-http's CORS layer: that layer
//! answers preflights and sets response headers, it does not refuse a
//! request by its `Host`, and the admin port is served by hyper directly.

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use http_body_util::Full;

/// The refusal for a request, if it is refused.
pub(super) fn refuse(
    method: &Method,
    headers: &HeaderMap,
    allowed_hosts: &[String],
) -> Option<http::Response<Full<Bytes>>> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(h) = host
        && !host_allowed(h, allowed_hosts)
    {
        return Some(super::json(
            StatusCode::MISDIRECTED_REQUEST,
            &serde_json::json!({
                "error": "host_not_allowed",
                "message": format!("the admin port does not answer to Host `{h}`; add the name to admin.allowed_hosts if it is yours"),
            }),
        ));
    }
    if *method == Method::GET || *method == Method::HEAD {
        return None;
    }
    let why = cross_site(headers, host)?;
    Some(super::json(
        StatusCode::FORBIDDEN,
        &serde_json::json!({"error": "cross_site_request", "message": why}),
    ))
}

/// Whether `Host` names this admin port: an IP literal, a loopback name,
/// or one of `allowed` (lowercase).
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        // `[::1]:9901`: an IPv6 literal.
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<IpAddr>().is_ok());
        }
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || allowed.contains(&name)
}

/// Why a request that changes state looks sent by a page of another site.
fn cross_site(headers: &HeaderMap, host: Option<&str>) -> Option<String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return Some(format!("Sec-Fetch-Site is `{site}`"));
    }
    if let Some(origin) = text("origin") {
        let authority = origin
            .split_once("://")
            .map(|(_, a)| a.trim_end_matches('/'));
        let same = match (authority, host) {
            (Some(a), Some(h)) => a.eq_ignore_ascii_case(h),
            _ => false,
        };
        if !same {
            return Some(format!("Origin `{origin}` is not this admin port"));
        }
    }
    if let Some(ct) = text("content-type") {
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if matches!(
            media.as_str(),
            "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data"
        ) {
            return Some(format!(
                "a `{media}` body can be sent by any page without a preflight; POST without a body (`curl -X POST`) or as application/json"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_by_kind() {
        let allowed = ["admin.internal".to_string()];
        for ok in [
            "127.0.0.1:9901",
            "127.0.0.1",
            "[::1]:9901",
            "10.0.3.7:9901",
            "localhost:9901",
            "LOCALHOST",
            "app.localhost:9901",
            "admin.internal:9901",
            "Admin.Internal.",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9901",
            "localhost.evil.example",
            "[evil]:1",
            "",
        ] {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
    }
}
