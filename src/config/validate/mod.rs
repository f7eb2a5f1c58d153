//! Validation: the file schema, overlaid, checked once and turned into the
//! runtime parameter types each layer is built with.
//!
//! Every cross-key rule lives here or in a submodule, and every error names
//! the key at fault. What comes out is already valid (a built
//! [`crate::retry::Backoff`], a parsed filter, the API key as a header
//! value), so nothing on the request path checks a setting again. This file
//! holds the order the sections are checked in (the first error wins) and
//! the sections that are a few single-key checks each: the listeners, the
//! upstream, the limits. The failure policy ([`policy`]), the spool
//! ([`spool`]) and the route table ([`routes`]) each have their own.

mod policy;
mod routes;
mod spool;

use std::time::Duration;

use bytesize::ByteSize;

use super::schema::{FileConfig, LimitsFile};
use super::{Config, ConfigError};
use crate::proxy::UpstreamTarget;
use crate::proxy::client::UpstreamParams;
use crate::proxy::forward::Limits;
use crate::proxy::server::ListenParams;
use crate::telemetry::LogParams;

/// Smallest header limit hyper accepts for its read buffer.
const MIN_HEADER_BYTES: u64 = 8 * 1024;

/// Check cross-key constraints and build the runtime config.
pub(super) fn validate(file: FileConfig) -> Result<Config, ConfigError> {
    let target = UpstreamTarget::parse(&file.upstream.url)?;
    if file.listen.address == file.admin.address && file.admin.address.port() != 0 {
        return Err(ConfigError::key(
            "admin.address",
            format!(
                "{} is also listen.address; the admin listener needs its own port",
                file.admin.address
            ),
        ));
    }
    let listen = listen(&file)?;
    let upstream = upstream(&file, target)?;
    let limits = limits(&file.limits)?;
    policy::timeouts("timeouts", file.timeouts.per_try, file.timeouts.deadline)?;
    let global_retry = policy::retry("retry", &file.retry)?;
    let budget = policy::budget(&file.retry)?;
    let breaker = policy::breaker(&file.breaker)?;
    let classify = policy::classify(&file)?;
    if file.runtime.worker_threads == 0 || file.runtime.worker_threads > 64 {
        return Err(ConfigError::key("runtime.worker_threads", "must be 1..=64"));
    }
    let spool = spool::spool(&file)?;
    let level = file
        .log
        .level
        .parse::<tracing_subscriber::filter::Targets>()
        .map_err(|e| ConfigError::key("log.level", e.to_string()))?;
    nonzero(file.shutdown.grace_period, "shutdown.grace_period")?;
    let (routes, warnings) = routes::routes(&file)?;
    spool::lease_outlasts_spooling_deadlines(&file, &routes)?;
    Ok(Config {
        listen,
        admin_address: file.admin.address,
        admin_allowed_hosts: admin_hosts(&file.admin.allowed_hosts)?,
        upstream,
        limits,
        retry: global_retry,
        budget,
        breaker,
        classify,
        spool,
        log: LogParams {
            format: file.log.format,
            level,
            access: file.log.access,
        },
        shutdown_grace: file.shutdown.grace_period,
        shutdown_drain_spool: file.shutdown.drain_spool,
        worker_threads: file.runtime.worker_threads,
        preset: file.preset,
        routes,
        warnings,
        file,
    })
}

/// `[listen]`: the app-facing listener's limits.
fn listen(file: &FileConfig) -> Result<ListenParams, ConfigError> {
    let l = &file.listen;
    if l.max_connections == 0 {
        return Err(ConfigError::key(
            "listen.max_connections",
            "must be at least 1",
        ));
    }
    if l.max_header_bytes.as_u64() < MIN_HEADER_BYTES {
        return Err(ConfigError::key(
            "listen.max_header_bytes",
            format!("must be at least {}", ByteSize(MIN_HEADER_BYTES)),
        ));
    }
    let max_header_bytes = usize::try_from(l.max_header_bytes.as_u64())
        .map_err(|_| ConfigError::key("listen.max_header_bytes", "is too large"))?;
    nonzero(l.header_read_timeout, "listen.header_read_timeout")?;
    Ok(ListenParams {
        address: l.address,
        http2: l.http2,
        max_connections: l.max_connections,
        header_read_timeout: l.header_read_timeout,
        max_header_bytes,
    })
}

/// `[upstream]`: the one backend and the connections to it.
fn upstream(file: &FileConfig, target: UpstreamTarget) -> Result<UpstreamParams, ConfigError> {
    let u = &file.upstream;
    if u.max_concurrent_requests == 0 {
        return Err(ConfigError::key(
            "upstream.max_concurrent_requests",
            "must be at least 1",
        ));
    }
    nonzero(u.connect_timeout, "upstream.connect_timeout")?;
    if let Some(ca) = &u.ca_file
        && !ca.is_file()
    {
        return Err(ConfigError::key(
            "upstream.ca_file",
            format!("{} is not a readable file", ca.display()),
        ));
    }
    Ok(UpstreamParams {
        target,
        connect_timeout: u.connect_timeout,
        pool_idle_timeout: u.pool_idle_timeout,
        pool_max_idle: u.pool_max_idle,
        max_concurrent_requests: u.max_concurrent_requests,
        http2: u.http2,
        tls_roots: u.tls_roots,
        ca_file: u.ca_file.clone(),
    })
}

/// `[limits]`: the GraphQL body fits in the request body, and the counts a
/// parse may meet are bounded.
fn limits(l: &LimitsFile) -> Result<Limits, ConfigError> {
    if l.max_graphql_body > l.max_request_body {
        return Err(ConfigError::key(
            "limits.max_graphql_body",
            "must not exceed limits.max_request_body",
        ));
    }
    let max_fields = crate::graphql::MAX_ROOT_FIELDS;
    if !(1..=max_fields).contains(&l.max_root_fields) {
        return Err(ConfigError::key(
            "limits.max_root_fields",
            format!("must be 1..={max_fields}"),
        ));
    }
    if !(1..=1_000_000).contains(&l.max_variables) {
        return Err(ConfigError::key(
            "limits.max_variables",
            "must be 1..=1000000",
        ));
    }
    Ok(Limits {
        max_request_body: l.max_request_body.as_u64(),
        max_graphql_body: l.max_graphql_body.as_u64(),
        max_root_fields: l.max_root_fields,
        max_variables: l.max_variables,
    })
}

/// `admin.allowed_hosts`: host names, without a scheme or a port.
fn admin_hosts(hosts: &[String]) -> Result<std::sync::Arc<[String]>, ConfigError> {
    hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if ok {
                Ok(h.to_ascii_lowercase())
            } else {
                Err(ConfigError::key(
                    format!("admin.allowed_hosts[{i}]"),
                    format!("`{h}` is not a host name (no scheme, no port)"),
                ))
            }
        })
        .collect()
}

/// A duration key for which zero means nothing sensible (a timeout that
/// fires at once, a backoff that does not back off).
fn nonzero(d: Duration, key: &str) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::key(key, "must be greater than zero"));
    }
    Ok(())
}
