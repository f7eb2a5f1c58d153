//! Validation: the file schema, overlaid, checked once and turned into the
//! runtime parameter types each layer is built with.
//!
//! Every cross-key rule lives here, and every error names the key at fault.
//! What comes out is already valid (a built [`Backoff`], a parsed filter,
//! the API key as a header value), so nothing on the request path checks a
//! setting again. The route table is built here too, from the file shape in
//! [`crate::route::file`]: `route` knows nothing of the config, which keeps
//! the two modules free of an import cycle.

use std::time::Duration;

use bytesize::ByteSize;
use http::{HeaderName, HeaderValue, Method};

use super::schema::{BreakerFile, FileConfig, RetryFile, SpoolBackendKind, SpoolFile};
use super::{Config, ConfigError};
use crate::breaker::BreakerParams;
use crate::classify::ClassifyParams;
use crate::graphql::OperationType;
use crate::proxy::UpstreamTarget;
use crate::proxy::client::UpstreamParams;
use crate::proxy::forward::Limits;
use crate::proxy::server::ListenParams;
use crate::retry::{Backoff, BudgetParams, RetryParams};
use crate::route::file::{
    OnFailure, Preset, RetryOverride, RouteFile, SpoolMode, TimeoutsOverride,
};
use crate::route::{GraphqlMatch, Origin, PathMatch, Route, literalai};
use crate::spool::store::pg::{PgParams, redact_url};
use crate::spool::{ReplayParams, SpoolBackend, SpoolLimits, SpoolSettings};
use crate::telemetry::LogParams;

/// Smallest header limit hyper accepts for its read buffer.
const MIN_HEADER_BYTES: u64 = 8 * 1024;

/// Check cross-key constraints and build the runtime config.
/// What `spool.lease` must exceed every spooling deadline by: the time a
/// renewal may take before a delivery starts on it.
const LEASE_MARGIN: Duration = Duration::from_millis(500);

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
    if file.limits.max_graphql_body > file.limits.max_request_body {
        return Err(ConfigError::key(
            "limits.max_graphql_body",
            "must not exceed limits.max_request_body",
        ));
    }
    let max_fields = crate::graphql::MAX_ROOT_FIELDS;
    if !(1..=max_fields).contains(&file.limits.max_root_fields) {
        return Err(ConfigError::key(
            "limits.max_root_fields",
            format!("must be 1..={max_fields}"),
        ));
    }
    if !(1..=1_000_000).contains(&file.limits.max_variables) {
        return Err(ConfigError::key(
            "limits.max_variables",
            "must be 1..=1000000",
        ));
    }
    timeouts("timeouts", file.timeouts.per_try, file.timeouts.deadline)?;
    let global_retry = retry("retry", &file.retry)?;
    let budget = budget(&file.retry)?;
    let breaker = breaker(&file.breaker)?;
    let classify = classify(&file)?;
    if file.runtime.worker_threads == 0 || file.runtime.worker_threads > 64 {
        return Err(ConfigError::key("runtime.worker_threads", "must be 1..=64"));
    }
    let spool = spool(&file)?;
    let level = file
        .log
        .level
        .parse::<tracing_subscriber::filter::Targets>()
        .map_err(|e| ConfigError::key("log.level", e.to_string()))?;
    nonzero(file.shutdown.grace_period, "shutdown.grace_period")?;
    let (routes, warnings) = routes(&file)?;
    if file.spool.backend == SpoolBackendKind::Postgres
        && let Some(r) = routes
            .iter()
            .filter(|r| r.spools())
            .find(|r| r.deadline.saturating_add(LEASE_MARGIN) > file.spool.lease)
    {
        return Err(ConfigError::key(
            "spool.lease",
            format!(
                "must be at least 500ms longer than the deadline of every spooling route (`{}` has {}): a delivery must be over before another replica may take the entry, renewal included",
                r.name,
                humantime::format_duration(r.deadline)
            ),
        ));
    }
    Ok(Config {
        listen,
        admin_address: file.admin.address,
        admin_allowed_hosts: admin_hosts(&file.admin.allowed_hosts)?,
        upstream,
        limits: Limits {
            max_request_body: file.limits.max_request_body.as_u64(),
            max_graphql_body: file.limits.max_graphql_body.as_u64(),
            max_root_fields: file.limits.max_root_fields,
            max_variables: file.limits.max_variables,
        },
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

fn classify(file: &FileConfig) -> Result<ClassifyParams, ConfigError> {
    let c = &file.classify;
    for (i, s) in c.transient_statuses.iter().enumerate() {
        if !(100..=599).contains(s) {
            return Err(ConfigError::key(
                format!("classify.transient_statuses[{i}]"),
                format!("{s} is not an HTTP status"),
            ));
        }
    }
    Ok(ClassifyParams {
        transient_statuses: c.transient_statuses.clone(),
        transient_graphql_codes: c.transient_graphql_codes.clone(),
        permanent_item_messages: c
            .permanent_item_messages
            .iter()
            .map(|m| m.to_lowercase())
            .collect(),
        max_graphql_response: c.max_graphql_response.as_u64(),
    })
}

fn spool(file: &FileConfig) -> Result<SpoolSettings, ConfigError> {
    let s = &file.spool;
    if s.max_batch == 0 {
        return Err(ConfigError::key("spool.max_batch", "must be at least 1"));
    }
    if s.replay_concurrency == 0 || s.replay_concurrency > 1024 {
        return Err(ConfigError::key(
            "spool.replay_concurrency",
            "must be 1..=1024",
        ));
    }
    if s.replay_batch == 0 || s.replay_batch > 1000 {
        return Err(ConfigError::key("spool.replay_batch", "must be 1..=1000"));
    }
    if s.replay_batch_bytes.as_u64() < 1024 {
        return Err(ConfigError::key(
            "spool.replay_batch_bytes",
            "must be at least 1KiB",
        ));
    }
    for (i, st) in s.dead_letter_statuses.iter().enumerate() {
        if !(400..=599).contains(st) {
            return Err(ConfigError::key(
                format!("spool.dead_letter_statuses[{i}]"),
                format!("{st} is not a 4xx or 5xx status"),
            ));
        }
    }
    if s.max_entries == 0 {
        return Err(ConfigError::key("spool.max_entries", "must be at least 1"));
    }
    let api_key_header = HeaderName::from_bytes(s.api_key_header.as_bytes())
        .map_err(|_| ConfigError::key("spool.api_key_header", "is not a valid header name"))?;
    let api_key = match &s.api_key {
        None => None,
        Some(key) => {
            let mut v = HeaderValue::from_str(key).map_err(|_| {
                // Never echo the value: it is a secret.
                ConfigError::key(
                    "spool.api_key",
                    "is not a valid header value (it contains a control character or a non-ASCII character)",
                )
            })?;
            v.set_sensitive(true);
            Some(v)
        }
    };
    nonzero(s.replay_backoff_base, "spool.replay_backoff_base")?;
    if s.replay_backoff_max < s.replay_backoff_base {
        return Err(ConfigError::key(
            "spool.replay_backoff_max",
            "must be at least spool.replay_backoff_base",
        ));
    }
    Ok(SpoolSettings {
        backend: backend(s)?,
        path: s.path.clone(),
        max_batch: s.max_batch,
        limits: SpoolLimits {
            max_entries: s.max_entries,
            max_bytes: s.max_bytes.as_u64(),
        },
        store_credentials: s.store_credentials,
        // A configured key is what replays send, in place of the one
        // stored with each entry (or of none, when credentials are not
        // stored): after a key rotation the entries carry the old key, and
        // setting this and reloading is how the queue drains with the new.
        replay_key: api_key.map(|v| (api_key_header.clone(), v)),
        api_key_header,
        replay: ReplayParams {
            backoff_base: s.replay_backoff_base,
            backoff_max: s.replay_backoff_max,
            concurrency: s.replay_concurrency,
            batch: s.replay_batch,
            batch_bytes: s.replay_batch_bytes.as_u64() as usize,
            dead_letter_statuses: s.dead_letter_statuses.clone(),
        },
        commit_margin: s.commit_margin,
    })
}

/// The spool's store, and with PostgreSQL its connection settings. The
/// password comes from the URL, `spool.postgres_password_file` or
/// `PGPASSWORD`; no message here ever contains it.
fn backend(s: &SpoolFile) -> Result<SpoolBackend, ConfigError> {
    let url = match (s.backend, &s.postgres_url) {
        (SpoolBackendKind::Sqlite, _) => return Ok(SpoolBackend::Sqlite),
        (SpoolBackendKind::Postgres, None) => {
            return Err(ConfigError::key(
                "spool.postgres_url",
                "is required with spool.backend = \"postgres\" (or set DATALAYER_SIDECAR_SPOOL_POSTGRES_URL)",
            ));
        }
        (SpoolBackendKind::Postgres, Some(u)) => u,
    };
    let display = redact_url(url);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::key(
            "spool.postgres_url",
            format!("`{display}` is not a postgres:// URL"),
        ));
    }
    let mut config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        // The parser's message names the option, never its value.
        ConfigError::key("spool.postgres_url", format!("`{display}`: {e}"))
    })?;
    if config.get_hosts().is_empty() {
        return Err(ConfigError::key(
            "spool.postgres_url",
            format!("`{display}` names no host"),
        ));
    }
    if config.get_password().is_none() {
        if let Some(file) = &s.postgres_password_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                ConfigError::key(
                    "spool.postgres_password_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            config.password(text.lines().next().unwrap_or_default().trim_end());
        } else if let Ok(pw) = std::env::var("PGPASSWORD") {
            config.password(pw);
        }
    }
    if s.postgres_pool == 0 || s.postgres_pool > 256 {
        return Err(ConfigError::key("spool.postgres_pool", "must be 1..=256"));
    }
    if s.lease < Duration::from_secs(1) {
        return Err(ConfigError::key("spool.lease", "must be at least 1s"));
    }
    if let Some(ca) = &s.postgres_ca_file
        && !ca.is_file()
    {
        return Err(ConfigError::key(
            "spool.postgres_ca_file",
            format!("{} is not a readable file", ca.display()),
        ));
    }
    Ok(SpoolBackend::Postgres(Box::new(PgParams {
        config,
        display,
        ca_file: s.postgres_ca_file.clone(),
        pool: s.postgres_pool,
        lease: s.lease,
    })))
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

fn nonzero(d: Duration, key: &str) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::key(key, "must be greater than zero"));
    }
    Ok(())
}

/// Timeouts shared by the global section and route overrides.
fn timeouts(prefix: &str, per_try: Duration, deadline: Duration) -> Result<(), ConfigError> {
    nonzero(per_try, &format!("{prefix}.per_try"))?;
    nonzero(deadline, &format!("{prefix}.deadline"))?;
    if per_try > deadline {
        return Err(ConfigError::key(
            format!("{prefix}.per_try"),
            format!(
                "{} is longer than {prefix}.deadline ({})",
                humantime::format_duration(per_try),
                humantime::format_duration(deadline)
            ),
        ));
    }
    Ok(())
}

/// A route's retry policy (the global section with its overrides).
fn retry(prefix: &str, r: &RetryFile) -> Result<RetryParams, ConfigError> {
    if r.max_attempts == 0 || r.max_attempts > 16 {
        return Err(ConfigError::key(
            format!("{prefix}.max_attempts"),
            "must be 1..=16 (1 disables retries)",
        ));
    }
    nonzero(r.backoff_base, &format!("{prefix}.backoff_base"))?;
    if r.backoff_max < r.backoff_base {
        return Err(ConfigError::key(
            format!("{prefix}.backoff_max"),
            "must be at least backoff_base",
        ));
    }
    if !(0.0..=1.0).contains(&r.jitter) {
        return Err(ConfigError::key(
            format!("{prefix}.jitter"),
            "must be 0.0..=1.0",
        ));
    }
    let backoff = Backoff::try_new(r.backoff_base, r.backoff_max, r.jitter)
        .map_err(|e| ConfigError::key(format!("{prefix}.backoff_base"), e.to_string()))?;
    Ok(RetryParams {
        max_attempts: r.max_attempts,
        backoff,
        max_replay_body: r.max_replay_body.as_u64(),
        retry_after_max: r.retry_after_max,
        min_attempt_time: r.min_attempt_time,
    })
}

/// The shared budget (global `[retry]` only).
fn budget(r: &RetryFile) -> Result<BudgetParams, ConfigError> {
    if !(0.0..=10.0).contains(&r.budget_ratio) || r.budget_ratio.is_nan() {
        return Err(ConfigError::key("retry.budget_ratio", "must be 0.0..=10.0"));
    }
    if r.budget_window < Duration::from_secs(1) || r.budget_window > Duration::from_secs(60) {
        return Err(ConfigError::key("retry.budget_window", "must be 1s..=60s"));
    }
    if r.budget_min_per_sec >= i32::MAX as u32 {
        return Err(ConfigError::key("retry.budget_min_per_sec", "is too large"));
    }
    Ok(BudgetParams {
        window: r.budget_window,
        min_per_sec: r.budget_min_per_sec,
        ratio: r.budget_ratio,
    })
}

fn breaker(b: &BreakerFile) -> Result<BreakerParams, ConfigError> {
    if !(b.failure_rate > 0.0 && b.failure_rate <= 1.0) {
        return Err(ConfigError::key(
            "breaker.failure_rate",
            "must be in (0.0, 1.0]",
        ));
    }
    if b.window < Duration::from_millis(100) {
        return Err(ConfigError::key("breaker.window", "must be at least 100ms"));
    }
    if b.min_calls == 0 {
        return Err(ConfigError::key("breaker.min_calls", "must be at least 1"));
    }
    nonzero(b.open_for, "breaker.open_for")?;
    if b.max_open_for < b.open_for {
        return Err(ConfigError::key(
            "breaker.max_open_for",
            "must be at least breaker.open_for",
        ));
    }
    if b.probes == 0 {
        return Err(ConfigError::key("breaker.probes", "must be at least 1"));
    }
    Ok(BreakerParams {
        enabled: b.enabled,
        window: b.window,
        min_calls: b.min_calls,
        failure_rate: b.failure_rate,
        consecutive_failures: b.consecutive_failures,
        open_for: b.open_for,
        max_open_for: b.max_open_for,
        probes: b.probes,
    })
}

/// Validate every `[[routes]]` entry, in order, then add the preset's
/// routes (those the operator did not replace by name) and a catch-all
/// `default` route unless one matches everything already. Returns the
/// table and warnings for the operator.
fn routes(file: &FileConfig) -> Result<(Vec<Route>, Vec<String>), ConfigError> {
    let preset = match file.preset {
        Preset::Literalai => literalai::routes(file.timeouts.per_try, file.retry.max_attempts),
        Preset::None => Vec::new(),
    };
    let mut routes: Vec<Route> = Vec::with_capacity(file.routes.len() + preset.len() + 1);
    let mut warnings = Vec::new();
    for (i, r) in file.routes.iter().enumerate() {
        let route = route(
            file,
            r,
            &format!("routes[{i}]"),
            routes.len(),
            Origin::Operator,
        )?;
        if routes.iter().any(|x| x.name == route.name) {
            return Err(ConfigError::key(
                format!("routes[{i}].name"),
                format!("`{}` is used by an earlier route", route.name),
            ));
        }
        routes.push(route);
    }
    let shadowing = routes.iter().position(Route::is_catch_all);
    for r in &preset {
        if routes.iter().any(|x| *x.name == *r.name) {
            continue;
        }
        let key = format!("preset {} route `{}`", file.preset.as_str(), r.name);
        let built = route(file, r, &key, routes.len(), Origin::Preset(file.preset))?;
        if let Some(at) = shadowing {
            warnings.push(format!(
                "routes[{at}] `{}` matches every request, so the {} preset's route `{}` after it is never used",
                routes[at].name,
                file.preset.as_str(),
                built.name
            ));
        }
        routes.push(built);
    }
    if !routes.iter().any(Route::is_catch_all) {
        let fallback = RouteFile {
            name: if routes.iter().any(|r| &*r.name == "default") {
                "default_fallback".into()
            } else {
                "default".into()
            },
            methods: Vec::new(),
            path: None,
            path_prefix: None,
            graphql: None,
            idempotent: None,
            error_format: None,
            on_failure: OnFailure::Error,
            mode: SpoolMode::OnFailure,
            breaker: true,
            timeouts: TimeoutsOverride::default(),
            retry: RetryOverride::default(),
        };
        let n = routes.len();
        routes.push(route(
            file,
            &fallback,
            "the catch-all route",
            n,
            Origin::Default,
        )?);
    }
    Ok((routes, warnings))
}

fn route(
    file: &FileConfig,
    r: &RouteFile,
    at: &str,
    i: usize,
    origin: Origin,
) -> Result<Route, ConfigError> {
    let key = |k: &str| format!("{at}.{k}");
    if r.name.trim().is_empty() || r.name.len() > 64 {
        return Err(ConfigError::key(key("name"), "must be 1..=64 characters"));
    }
    if !r
        .name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ConfigError::key(
            key("name"),
            "may contain only letters, digits, `_` and `-` (it becomes a metric label)",
        ));
    }
    let mut methods = Vec::with_capacity(r.methods.len());
    for m in &r.methods {
        let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| ConfigError::key(key("methods"), format!("`{m}` is not a method")))?;
        methods.push(method);
    }
    let path = match (&r.path, &r.path_prefix) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::key(
                key("path"),
                "set either path or path_prefix, not both",
            ));
        }
        (Some(p), None) => PathMatch::Exact(check_path(p, &key("path"))?),
        (None, Some(p)) => {
            let p = check_path(p, &key("path_prefix"))?;
            if p == "/" {
                PathMatch::Any
            } else {
                PathMatch::Prefix(p)
            }
        }
        (None, None) => PathMatch::Any,
    };
    let graphql = match &r.graphql {
        None => None,
        Some(g) => {
            if let Some(fields) = &g.root_fields
                && fields.is_empty()
            {
                return Err(ConfigError::key(
                    key("graphql.root_fields"),
                    "must name at least one field (leave it out to match any)",
                ));
            }
            Some(GraphqlMatch {
                operation_type: g.operation_type,
                operation_name: g.operation_name.clone(),
                root_fields: g.root_fields.clone(),
            })
        }
    };
    let per_try = r.timeouts.per_try.unwrap_or(file.timeouts.per_try);
    let deadline = r.timeouts.deadline.unwrap_or(file.timeouts.deadline);
    timeouts(&key("timeouts"), per_try, deadline)?;
    let mut retry_file = file.retry.clone();
    let o = &r.retry;
    if let Some(v) = o.max_attempts {
        retry_file.max_attempts = v;
    }
    if let Some(v) = o.backoff_base {
        retry_file.backoff_base = v;
    }
    if let Some(v) = o.backoff_max {
        retry_file.backoff_max = v;
    }
    if let Some(v) = o.max_replay_body {
        retry_file.max_replay_body = v;
    }
    if let Some(v) = o.retry_after_max {
        retry_file.retry_after_max = v;
    }
    let retry = retry(&key("retry"), &retry_file)?;
    if r.on_failure == OnFailure::Spool {
        let mutation = r
            .graphql
            .as_ref()
            .is_some_and(|g| g.operation_type == Some(OperationType::Mutation));
        if !mutation {
            return Err(ConfigError::key(
                key("on_failure"),
                "`spool` needs `graphql = { operation_type = \"mutation\", ... }`: the sidecar answers a spooled write with the GraphQL success the client expects",
            ));
        }
        if !file.spool.store_credentials && file.spool.api_key.is_none() {
            return Err(ConfigError::key(
                "spool.api_key",
                "is required when spool.store_credentials = false (set it, or DATALAYER_SIDECAR_SPOOL_API_KEY): replays need a key",
            ));
        }
        if r.idempotent != Some(true) {
            return Err(ConfigError::key(
                key("on_failure"),
                "`spool` delivers at least once, so the route must set `idempotent = true`",
            ));
        }
        if deadline <= file.spool.commit_margin {
            return Err(ConfigError::key(
                key("timeouts.deadline"),
                "must be longer than spool.commit_margin on a spooling route",
            ));
        }
    }
    if r.mode == SpoolMode::WriteBehind && r.on_failure != OnFailure::Spool {
        return Err(ConfigError::key(
            key("mode"),
            "`write_behind` needs `on_failure = \"spool\"`",
        ));
    }
    Ok(Route {
        name: r.name.as_str().into(),
        index: i,
        origin,
        methods: methods.into_boxed_slice(),
        path,
        graphql,
        idempotent: r.idempotent,
        error_format: r.error_format,
        on_failure: r.on_failure,
        // With the shared store, the fleet's one order is the order of
        // commits to it: every spooled write goes through it.
        mode: if r.on_failure == OnFailure::Spool
            && file.spool.backend == SpoolBackendKind::Postgres
        {
            SpoolMode::WriteBehind
        } else {
            r.mode
        },
        breaker: r.breaker,
        per_try,
        deadline,
        retry,
    })
}

fn check_path(p: &str, key: &str) -> Result<String, ConfigError> {
    if !p.starts_with('/') {
        return Err(ConfigError::key(key, format!("`{p}` must start with `/`")));
    }
    if p.contains('?') || p.contains('#') {
        return Err(ConfigError::key(key, "a path has no query or fragment"));
    }
    Ok(p.to_string())
}

/// Keys whose change a reload cannot apply: they shape a socket, a file
/// handle or the runtime made at start. A reload reports them as "restart
/// needed" (with the value still in force) and applies everything else.
pub(super) fn restart_needed(old: &FileConfig, new: &FileConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |key: &'static str, changed: bool| {
        if changed {
            keys.push(key);
        }
    };
    let (a, b) = (&old.listen, &new.listen);
    check("listen.address", a.address != b.address);
    check("listen.http2", a.http2 != b.http2);
    check(
        "listen.max_connections",
        a.max_connections != b.max_connections,
    );
    check(
        "listen.header_read_timeout",
        a.header_read_timeout != b.header_read_timeout,
    );
    check(
        "listen.max_header_bytes",
        a.max_header_bytes != b.max_header_bytes,
    );
    check("admin.address", old.admin.address != new.admin.address);
    check("spool.path", old.spool.path != new.spool.path);
    check("spool.backend", old.spool.backend != new.spool.backend);
    check(
        "spool.postgres_url",
        old.spool.postgres_url != new.spool.postgres_url,
    );
    check(
        "spool.postgres_password_file",
        old.spool.postgres_password_file != new.spool.postgres_password_file,
    );
    check(
        "spool.postgres_ca_file",
        old.spool.postgres_ca_file != new.spool.postgres_ca_file,
    );
    check(
        "spool.postgres_pool",
        old.spool.postgres_pool != new.spool.postgres_pool,
    );
    check("spool.lease", old.spool.lease != new.spool.lease);
    check(
        "spool.max_batch",
        old.spool.max_batch != new.spool.max_batch,
    );
    check(
        "runtime.worker_threads",
        old.runtime.worker_threads != new.runtime.worker_threads,
    );
    check("log.format", old.log.format != new.log.format);
    keys
}

/// Put back into `new` the keys that need a restart, so the generation a
/// reload builds describes what actually runs.
pub(super) fn keep_restart_keys(old: &FileConfig, new: &mut FileConfig) {
    new.listen = old.listen.clone();
    new.admin.address = old.admin.address;
    new.spool.path = old.spool.path.clone();
    new.spool.backend = old.spool.backend;
    new.spool.postgres_url = old.spool.postgres_url.clone();
    new.spool.postgres_password_file = old.spool.postgres_password_file.clone();
    new.spool.postgres_ca_file = old.spool.postgres_ca_file.clone();
    new.spool.postgres_pool = old.spool.postgres_pool;
    new.spool.lease = old.spool.lease;
    new.spool.max_batch = old.spool.max_batch;
    new.runtime.worker_threads = old.runtime.worker_threads;
    new.log.format = old.log.format;
}
