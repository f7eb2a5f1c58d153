//! `[spool]`: the store-and-forward queue's limits, the key replays send,
//! its replay pacing, and which store holds it (with PostgreSQL, the
//! connection settings and the lease every spooling route must fit in).
//!
//! Separate because the spool is the one section with a secret (the API key,
//! the database password) that no message may echo, and with a rule that
//! reaches across to the route table (the lease).

use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::super::ConfigError;
use super::super::schema::{FileConfig, SpoolBackendKind, SpoolFile};
use super::nonzero;
use crate::route::Route;
use crate::spool::store::pg::{PgParams, redact_url};
use crate::spool::{ReplayParams, SpoolBackend, SpoolLimits, SpoolSettings};

/// What `spool.lease` must exceed every spooling deadline by: the time a
/// renewal may take before a delivery starts on it.
const LEASE_MARGIN: Duration = Duration::from_millis(500);

/// The spool's settings, every key of `[spool]` checked.
pub(super) fn spool(file: &FileConfig) -> Result<SpoolSettings, ConfigError> {
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
    let (api_key_header, api_key) = api_key(s)?;
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

/// `spool.api_key_header`, and `spool.api_key` as a sensitive value of it.
fn api_key(s: &SpoolFile) -> Result<(HeaderName, Option<HeaderValue>), ConfigError> {
    let header = HeaderName::from_bytes(s.api_key_header.as_bytes())
        .map_err(|_| ConfigError::key("spool.api_key_header", "is not a valid header name"))?;
    let Some(key) = &s.api_key else {
        return Ok((header, None));
    };
    let mut value = HeaderValue::from_str(key).map_err(|_| {
        // Never echo the value: it is a secret.
        ConfigError::key(
            "spool.api_key",
            "is not a valid header value (it contains a control character or a non-ASCII character)",
        )
    })?;
    value.set_sensitive(true);
    Ok((header, Some(value)))
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

/// With the shared store, `spool.lease` must outlast every spooling route's
/// deadline by [`LEASE_MARGIN`]: a delivery must be over before another
/// replica may take the entry.
pub(super) fn lease_outlasts_spooling_deadlines(
    file: &FileConfig,
    routes: &[Route],
) -> Result<(), ConfigError> {
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
    Ok(())
}
