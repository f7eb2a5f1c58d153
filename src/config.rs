//! Configuration: a TOML file deserialized into `*File` structs, overlaid with
//! `DATALAYER_SIDECAR_<SECTION>_<KEY>` environment variables and CLI flags, then
//! validated into the runtime [`Config`].
//!
//! Precedence is defaults < file < environment < flags. Every key has a
//! documented default (see `config/sidecar.toml`), durations are human strings
//! (`"250ms"`, `"5s"`), sizes are human strings or integers (`"16KiB"`, `1024`),
//! and unknown keys are rejected: an operator who misspells a key is told, with
//! the key's path, instead of silently running with the default.
//!
//! The environment overlay works on the parsed TOML table rather than on typed
//! structs so that an environment value goes through exactly the same
//! deserialization and error reporting as the same value written in the file.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use serde::{Deserialize, Serialize};

use crate::route::{Preset, RouteFile};

/// Prefix of the environment variables that override file keys.
pub const ENV_PREFIX: &str = "DATALAYER_SIDECAR_";

/// Smallest header limit hyper accepts for its read buffer.
const MIN_HEADER_BYTES: u64 = 8 * 1024;

/// A configuration problem, always naming the key (or the file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given by the operator.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The path given by the operator.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key has a value of the wrong type or shape, or is unknown.
    #[error("config key `{key}`: {message}")]
    Key {
        /// Dotted path of the key, e.g. `timeouts.per_try`.
        key: String,
        /// Why the value was refused.
        message: String,
    },
    /// An environment variable could not be applied.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// Why it was refused.
        message: String,
    },
}

impl ConfigError {
    /// A validation error for `key`.
    pub fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

// === file structs ===

/// The whole file, as written by the operator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// The built-in routes after the operator's: `literalai` (default) or
    /// `none`.
    pub preset: Preset,
    /// The app-facing listener.
    pub listen: ListenFile,
    /// The one backend every request goes to.
    pub upstream: UpstreamFile,
    /// The admin listener (health, readiness, metrics, state).
    pub admin: AdminFile,
    /// Request limits.
    pub limits: LimitsFile,
    /// Timeouts applied to each request.
    pub timeouts: TimeoutsFile,
    /// Retry policy.
    pub retry: RetryFile,
    /// Circuit breaker for the upstream.
    pub breaker: BreakerFile,
    /// Which outcomes are transient.
    pub classify: ClassifyFile,
    /// Store-and-forward spool.
    pub spool: SpoolFile,
    /// Logging.
    pub log: LogFile,
    /// Shutdown behaviour.
    pub shutdown: ShutdownFile,
    /// Async runtime sizing.
    pub runtime: RuntimeFile,
    /// Routes, matched in order before the preset's; the first match wins.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteFile>,
}

/// `[listen]`: where the app connects.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenFile {
    /// Address to bind; loopback by default so the sidecar is reachable only
    /// from its own pod or host.
    pub address: SocketAddr,
    /// Also accept HTTP/2 with prior knowledge (h2c) on the same port.
    pub http2: bool,
    /// Connections served at once; further clients wait in the kernel backlog.
    pub max_connections: usize,
    /// A client must finish sending request headers within this time.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) accepted.
    pub max_header_bytes: ByteSize,
}

impl Default for ListenFile {
    fn default() -> Self {
        ListenFile {
            address: SocketAddr::from(([127, 0, 0, 1], 8787)),
            http2: false,
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: ByteSize::kib(16),
        }
    }
}

/// Which root certificates verify the upstream's TLS certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsRoots {
    /// Mozilla's roots compiled into the binary (works in a scratch image).
    Webpki,
    /// The operating system's trust store.
    Platform,
}

/// `[upstream]`: the single backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamFile {
    /// Base URL of the backend, `http://` or `https://`, optionally with a
    /// path prefix. Required.
    pub url: String,
    /// TCP connect (and TLS handshake) must finish within this time.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this time.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Idle connections kept in the pool.
    pub pool_max_idle: usize,
    /// Requests in flight to the upstream at once (live and replays); more
    /// wait their turn, within their deadline. Bounds the sidecar's
    /// connections and memory under a burst.
    pub max_concurrent_requests: usize,
    /// Offer HTTP/2 through ALPN on TLS connections.
    pub http2: bool,
    /// Root certificates trusted for the upstream.
    pub tls_roots: TlsRoots,
    /// Extra PEM CA certificates trusted in addition to `tls_roots`.
    pub ca_file: Option<PathBuf>,
}

impl Default for UpstreamFile {
    fn default() -> Self {
        UpstreamFile {
            url: String::new(),
            connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle: 256,
            max_concurrent_requests: 64,
            http2: true,
            tls_roots: TlsRoots::Webpki,
            ca_file: None,
        }
    }
}

/// `[admin]`: the operator's listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminFile {
    /// Address to bind; loopback by default.
    pub address: SocketAddr,
}

impl Default for AdminFile {
    fn default() -> Self {
        AdminFile {
            address: SocketAddr::from(([127, 0, 0, 1], 9901)),
        }
    }
}

/// `[limits]`: bounds on what a client may send.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest request body forwarded; larger gets 413 `request_too_large`.
    pub max_request_body: ByteSize,
    /// Largest GraphQL request body; these are read whole to parse the
    /// operation, so this bounds memory per request.
    pub max_graphql_body: ByteSize,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_request_body: ByteSize::mib(128),
            max_graphql_body: ByteSize::mib(16),
        }
    }
}

/// `[timeouts]`: the global timeout policy; routes may override each key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsFile {
    /// One attempt (connect, send, response head and, for GraphQL routes, the
    /// whole response body) must finish within this time.
    #[serde(with = "humantime_serde")]
    pub per_try: Duration,
    /// All attempts and backoff together must finish within this time. The
    /// default stays below the LiteralAI SDK's own 10 s timeout so the app
    /// always gets the sidecar's answer first.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

impl Default for TimeoutsFile {
    fn default() -> Self {
        TimeoutsFile {
            per_try: Duration::from_secs(3),
            deadline: Duration::from_millis(8500),
        }
    }
}

/// `[retry]`: the global retry policy; routes may override each key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryFile {
    /// Attempts per request, the first included. 1 disables retries.
    pub max_attempts: u32,
    /// First backoff ceiling; each retry doubles it up to `backoff_max`.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Largest backoff ceiling.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Fraction of the ceiling that is random (1.0 = full jitter).
    pub jitter: f64,
    /// Largest request body kept in memory to replay; larger bodies are sent
    /// once.
    pub max_replay_body: ByteSize,
    /// Longest `Retry-After` the sidecar will wait for before a retry.
    #[serde(with = "humantime_serde")]
    pub retry_after_max: Duration,
    /// A retry starts only if at least this much time is left before the
    /// deadline once its backoff has elapsed.
    #[serde(with = "humantime_serde")]
    pub min_attempt_time: Duration,
    /// Retries allowed as a fraction of recent requests, across all requests.
    pub budget_ratio: f32,
    /// Retries per second always allowed, whatever the ratio says.
    pub budget_min_per_sec: u32,
    /// How long a request counts toward the budget (1s..=60s).
    #[serde(with = "humantime_serde")]
    pub budget_window: Duration,
}

impl Default for RetryFile {
    fn default() -> Self {
        RetryFile {
            max_attempts: 4,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            jitter: 1.0,
            max_replay_body: ByteSize::kib(256),
            retry_after_max: Duration::from_secs(5),
            min_attempt_time: Duration::from_millis(200),
            budget_ratio: 0.5,
            budget_min_per_sec: 10,
            budget_window: Duration::from_secs(10),
        }
    }
}

/// `[breaker]`: the circuit breaker for the one upstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerFile {
    /// Turn the breaker off entirely.
    pub enabled: bool,
    /// Sliding window over which the failure rate is computed.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Calls in the window before the failure rate can trip the breaker.
    pub min_calls: u32,
    /// Failure rate (0..=1) in the window that trips the breaker.
    pub failure_rate: f64,
    /// Consecutive transient failures that trip the breaker (0 = off).
    pub consecutive_failures: u32,
    /// How long the breaker stays open before letting probes through.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// Longest open time, also the cap on an upstream's `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub max_open_for: Duration,
    /// Requests let through at once while probing; all must succeed to close.
    pub probes: u32,
}

impl Default for BreakerFile {
    fn default() -> Self {
        BreakerFile {
            enabled: true,
            window: Duration::from_secs(10),
            min_calls: 20,
            failure_rate: 0.5,
            consecutive_failures: 20,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
            probes: 3,
        }
    }
}

/// `[classify]`: which outcomes are transient (worth a retry, counted by the
/// breaker, spoolable) rather than permanent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifyFile {
    /// HTTP statuses that are transient failures.
    pub transient_statuses: Vec<u16>,
    /// GraphQL `errors[].extensions.code` values that are transient.
    pub transient_graphql_codes: Vec<String>,
    /// An item answered `ok: false` is transient (retried, spooled) unless its
    /// `message` contains one of these (case-insensitive) words.
    pub permanent_item_messages: Vec<String>,
    /// Largest GraphQL response body read to classify it; past this bound
    /// the response streams through unclassified (and the log says so).
    pub max_graphql_response: ByteSize,
}

impl Default for ClassifyFile {
    fn default() -> Self {
        ClassifyFile {
            transient_statuses: vec![429, 502, 503, 504],
            transient_graphql_codes: [
                "INTERNAL_SERVER_ERROR",
                "SERVICE_UNAVAILABLE",
                "TIMEOUT",
                "TOO_MANY_REQUESTS",
            ]
            .map(String::from)
            .to_vec(),
            permanent_item_messages: [
                "invalid",
                "validation",
                "unauthorized",
                "forbidden",
                "not allowed",
            ]
            .map(String::from)
            .to_vec(),
            max_graphql_response: ByteSize::mib(1),
        }
    }
}

/// `[spool]`: the durable store-and-forward spool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolFile {
    /// SQLite database file; its directory is created if missing.
    pub path: PathBuf,
    /// Store the client's credentials with each entry so replay uses them.
    /// When false, replay sends `api_key` instead.
    pub store_credentials: bool,
    /// The key sent on replay when `store_credentials` is false (or set
    /// `DATALAYER_SIDECAR_SPOOL_API_KEY`). Never printed or logged.
    pub api_key: Option<String>,
    /// Header that carries the credential.
    pub api_key_header: String,
    /// Spool capacity in entries; past it writes get 503 `spool_full`.
    pub max_entries: u64,
    /// Spool capacity in stored request bytes.
    pub max_bytes: ByteSize,
    /// Largest number of writes committed in one transaction (group commit).
    pub max_batch: usize,
    /// First delay after a failed replay; doubles up to `replay_backoff_max`.
    #[serde(with = "humantime_serde")]
    pub replay_backoff_base: Duration,
    /// Largest delay between failed replays.
    #[serde(with = "humantime_serde")]
    pub replay_backoff_max: Duration,
    /// Margin kept before a spooling route's deadline for the local commit.
    #[serde(with = "humantime_serde")]
    pub commit_margin: Duration,
    /// Replays in flight at once (entries touching different steps).
    pub replay_concurrency: usize,
    /// HTTP statuses with which the backend refuses a write for its own
    /// content: the write moves to dead letters. Any other refusal (401,
    /// 403, 404, a TLS certificate the roots reject, ...) says the system is
    /// wrong, not the write: the queue pauses until a probe goes through.
    pub dead_letter_statuses: Vec<u16>,
}

impl Default for SpoolFile {
    fn default() -> Self {
        SpoolFile {
            path: PathBuf::from("data/spool.sqlite3"),
            store_credentials: true,
            api_key: None,
            api_key_header: "x-api-key".to_string(),
            max_entries: 1_000_000,
            max_bytes: ByteSize::gib(1),
            max_batch: 256,
            replay_backoff_base: Duration::from_millis(100),
            replay_backoff_max: Duration::from_secs(10),
            commit_margin: Duration::from_millis(500),
            replay_concurrency: 16,
            dead_letter_statuses: vec![400, 409, 410, 413, 422],
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line (for containers and log shippers).
    Json,
    /// Human-readable lines.
    Text,
}

/// `[log]`: logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogFile {
    /// `json` or `text`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,datalayer_sidecar=debug`.
    /// `RUST_LOG` overrides it.
    pub level: String,
    /// Emit one access line per request.
    pub access: bool,
}

impl Default for LogFile {
    fn default() -> Self {
        LogFile {
            format: LogFormat::Json,
            level: "info".to_string(),
            access: true,
        }
    }
}

/// `[shutdown]`: how the sidecar stops.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownFile {
    /// After SIGTERM/SIGINT, in-flight requests get this long to finish.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

impl Default for ShutdownFile {
    fn default() -> Self {
        ShutdownFile {
            grace_period: Duration::from_secs(20),
        }
    }
}

/// `[runtime]`: the async runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeFile {
    /// Worker threads; 1 runs everything on one thread, which costs the least
    /// CPU and memory per request for a sidecar that has one core or less.
    pub worker_threads: usize,
}

impl Default for RuntimeFile {
    fn default() -> Self {
        RuntimeFile { worker_threads: 1 }
    }
}

// === overrides ===

/// Values given on the command line; each beats the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--upstream`
    pub upstream: Option<String>,
    /// `--admin-listen`
    pub admin_listen: Option<SocketAddr>,
    /// `--log-format`
    pub log_format: Option<LogFormat>,
}

// === runtime config ===

/// The upstream, parsed.
#[derive(Debug, Clone)]
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
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let key = "upstream.url";
        if url.is_empty() {
            return Err(ConfigError::key(
                key,
                "is required: the URL of the LiteralAI-compatible backend (e.g. https://backend.example.com)",
            ));
        }
        let uri: Uri = url
            .parse()
            .map_err(|e| ConfigError::key(key, format!("`{url}` is not a URL: {e}")))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| {
            ConfigError::key(
                key,
                format!("`{url}` has no scheme; write http://{url} or https://{url}"),
            )
        })?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(ConfigError::key(
                key,
                format!("scheme `{scheme}` is not supported; use http or https"),
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| ConfigError::key(key, format!("`{url}` has no host")))?;
        if authority.as_str().contains('@') {
            return Err(ConfigError::key(
                key,
                "credentials in the URL are not allowed (they would be logged and sent on every request)",
            ));
        }
        if authority.host().is_empty() {
            return Err(ConfigError::key(key, format!("`{url}` has no host")));
        }
        let pq = uri.path_and_query().map(PathAndQuery::as_str).unwrap_or("");
        if pq.contains('?') {
            return Err(ConfigError::key(key, "a query string is not allowed"));
        }
        let base_path = pq.trim_end_matches('/').to_string();
        Ok(UpstreamTarget {
            scheme,
            authority,
            base_path,
        })
    }
}

/// The validated configuration the sidecar runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The effective file structs (defaults, file, environment and flags
    /// merged), kept for `check-config` and for modules that read them.
    pub file: FileConfig,
    /// The upstream, parsed.
    pub upstream: UpstreamTarget,
    /// Routes, validated, in match order: the operator's, the preset's,
    /// the catch-all.
    pub routes: Vec<crate::route::Route>,
    /// Things the operator should know that do not stop the sidecar (a
    /// route that shadows the preset, ...).
    pub warnings: Vec<String>,
}

impl Config {
    /// Load from an optional file, then the process environment, then `overrides`.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != "DATALAYER_SIDECAR_CONFIG")
            .collect();
        Self::load_with_env(path, &env, overrides)
    }

    /// Like [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: &[(String, String)],
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let display_path = path.map(Path::to_path_buf).unwrap_or_default();
        Self::from_toml_str(&text, &display_path, env, overrides)
    }

    /// Parse TOML text, apply `env` and `overrides`, validate.
    pub fn from_toml_str(
        text: &str,
        path: &Path,
        env: &[(String, String)],
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        apply_env(&mut table, env)?;
        let mut file: FileConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                let key = if key == "." {
                    "(top level)".to_string()
                } else {
                    key
                };
                ConfigError::key(key, e.into_inner().to_string())
            })?;
        if let Some(a) = overrides.listen {
            file.listen.address = a;
        }
        if let Some(u) = &overrides.upstream {
            file.upstream.url = u.clone();
        }
        if let Some(a) = overrides.admin_listen {
            file.admin.address = a;
        }
        if let Some(f) = overrides.log_format {
            file.log.format = f;
        }
        Self::validate(file)
    }

    /// Check cross-key constraints and build the runtime structs.
    pub fn validate(file: FileConfig) -> Result<Self, ConfigError> {
        let upstream = UpstreamTarget::parse(&file.upstream.url)?;
        if file.listen.address == file.admin.address && file.admin.address.port() != 0 {
            return Err(ConfigError::key(
                "admin.address",
                format!(
                    "{} is also listen.address; the admin listener needs its own port",
                    file.admin.address
                ),
            ));
        }
        if file.upstream.max_concurrent_requests == 0 {
            return Err(ConfigError::key(
                "upstream.max_concurrent_requests",
                "must be at least 1",
            ));
        }
        if file.listen.max_connections == 0 {
            return Err(ConfigError::key(
                "listen.max_connections",
                "must be at least 1",
            ));
        }
        if file.listen.max_header_bytes.as_u64() < MIN_HEADER_BYTES {
            return Err(ConfigError::key(
                "listen.max_header_bytes",
                format!("must be at least {}", ByteSize(MIN_HEADER_BYTES)),
            ));
        }
        nonzero(
            file.listen.header_read_timeout,
            "listen.header_read_timeout",
        )?;
        nonzero(file.upstream.connect_timeout, "upstream.connect_timeout")?;
        if let Some(ca) = &file.upstream.ca_file
            && !ca.is_file()
        {
            return Err(ConfigError::key(
                "upstream.ca_file",
                format!("{} is not a readable file", ca.display()),
            ));
        }
        if file.limits.max_graphql_body > file.limits.max_request_body {
            return Err(ConfigError::key(
                "limits.max_graphql_body",
                "must not exceed limits.max_request_body",
            ));
        }
        validate_timeouts("timeouts", file.timeouts.per_try, file.timeouts.deadline)?;
        validate_retry("retry", &file.retry)?;
        validate_breaker(&file.breaker)?;
        for (i, s) in file.classify.transient_statuses.iter().enumerate() {
            if !(100..=599).contains(s) {
                return Err(ConfigError::key(
                    format!("classify.transient_statuses[{i}]"),
                    format!("{s} is not an HTTP status"),
                ));
            }
        }
        if file.runtime.worker_threads == 0 || file.runtime.worker_threads > 64 {
            return Err(ConfigError::key("runtime.worker_threads", "must be 1..=64"));
        }
        if file.spool.max_batch == 0 {
            return Err(ConfigError::key("spool.max_batch", "must be at least 1"));
        }
        if file.spool.replay_concurrency == 0 || file.spool.replay_concurrency > 1024 {
            return Err(ConfigError::key(
                "spool.replay_concurrency",
                "must be 1..=1024",
            ));
        }
        for (i, s) in file.spool.dead_letter_statuses.iter().enumerate() {
            if !(400..=599).contains(s) {
                return Err(ConfigError::key(
                    format!("spool.dead_letter_statuses[{i}]"),
                    format!("{s} is not a 4xx or 5xx status"),
                ));
            }
        }
        if file.spool.max_entries == 0 {
            return Err(ConfigError::key("spool.max_entries", "must be at least 1"));
        }
        if file
            .spool
            .api_key_header
            .parse::<http::HeaderName>()
            .is_err()
        {
            return Err(ConfigError::key(
                "spool.api_key_header",
                "is not a valid header name",
            ));
        }
        if let Some(key) = &file.spool.api_key
            && http::HeaderValue::from_str(key).is_err()
        {
            // Never echo the value: it is a secret.
            return Err(ConfigError::key(
                "spool.api_key",
                "is not a valid header value (it contains a control character or a non-ASCII character)",
            ));
        }
        nonzero(file.spool.replay_backoff_base, "spool.replay_backoff_base")?;
        if file.spool.replay_backoff_max < file.spool.replay_backoff_base {
            return Err(ConfigError::key(
                "spool.replay_backoff_max",
                "must be at least spool.replay_backoff_base",
            ));
        }
        file.log
            .level
            .parse::<tracing_subscriber::filter::Targets>()
            .map_err(|e| ConfigError::key("log.level", e.to_string()))?;
        let (routes, warnings) = crate::route::Route::build_all(&file)?;
        Ok(Config {
            file,
            upstream,
            routes,
            warnings,
        })
    }

    /// The effective configuration as TOML, with secrets replaced.
    pub fn to_toml(&self) -> String {
        let mut file = self.file.clone();
        if file.spool.api_key.is_some() {
            file.spool.api_key = Some("<redacted>".to_string());
        }
        let mut out = toml::to_string_pretty(&file)
            .unwrap_or_else(|e| format!("# cannot print config: {e}\n"));
        out.push_str(&format!(
            "\n# Effective route table (preset \"{}\"), matched in order:\n",
            self.file.preset.as_str()
        ));
        for r in &self.routes {
            out.push_str(&format!(
                "#   {:<2} {} [{}]: {}\n",
                r.index + 1,
                r.name,
                r.origin.as_str(),
                r.describe()
            ));
        }
        for w in &self.warnings {
            out.push_str(&format!("# warning: {w}\n"));
        }
        out
    }
}

fn nonzero(d: Duration, key: &str) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::key(key, "must be greater than zero"));
    }
    Ok(())
}

/// Timeouts shared by the global section and route overrides.
pub(crate) fn validate_timeouts(
    prefix: &str,
    per_try: Duration,
    deadline: Duration,
) -> Result<(), ConfigError> {
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

/// Retry settings shared by the global section and route overrides. Checked
/// here because the budget's constructor asserts its inputs.
pub(crate) fn validate_retry(prefix: &str, r: &RetryFile) -> Result<(), ConfigError> {
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
    if !(0.0..=10.0).contains(&r.budget_ratio) || r.budget_ratio.is_nan() {
        return Err(ConfigError::key(
            format!("{prefix}.budget_ratio"),
            "must be 0.0..=10.0",
        ));
    }
    if r.budget_window < Duration::from_secs(1) || r.budget_window > Duration::from_secs(60) {
        return Err(ConfigError::key(
            format!("{prefix}.budget_window"),
            "must be 1s..=60s",
        ));
    }
    if r.budget_min_per_sec >= i32::MAX as u32 {
        return Err(ConfigError::key(
            format!("{prefix}.budget_min_per_sec"),
            "is too large",
        ));
    }
    Ok(())
}

fn validate_breaker(b: &BreakerFile) -> Result<(), ConfigError> {
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
    Ok(())
}

/// Sections an environment variable may name. `routes` is a list and can only
/// be set in the file.
const ENV_SECTIONS: &[&str] = &[
    "listen", "upstream", "admin", "limits", "timeouts", "retry", "breaker", "classify", "spool",
    "log", "shutdown", "runtime",
];

/// Overlay `DATALAYER_SIDECAR_<SECTION>_<KEY>=value` onto the parsed file.
///
/// The value is read as a TOML value when it parses as one (numbers, booleans,
/// arrays) and as a plain string otherwise, so `..._TIMEOUTS_PER_TRY=2s` and
/// `..._LISTEN_MAX_CONNECTIONS=64` both work.
fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if rest == "CONFIG" {
            continue;
        }
        // The one top-level key.
        if rest == "PRESET" {
            table.insert("preset".to_string(), toml::Value::String(raw.clone()));
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        let Some((section, key)) = lower.split_once('_') else {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: "expected DATALAYER_SIDECAR_<SECTION>_<KEY>".to_string(),
            });
        };
        if !ENV_SECTIONS.contains(&section) {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: format!(
                    "unknown section `{section}`; expected one of {}",
                    ENV_SECTIONS.join(", ")
                ),
            });
        }
        if !seen.insert((section.to_string(), key.to_string())) {
            continue;
        }
        let value = parse_env_value(raw);
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(sub) = entry else {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: format!("`{section}` in the file is not a table"),
            });
        };
        sub.insert(key.to_string(), value);
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_toml_str(text, Path::new("test.toml"), &env, &Overrides::default())
    }

    const MIN: &str = "[upstream]\nurl = \"http://127.0.0.1:9\"\n";

    #[test]
    fn defaults_are_safe() {
        let c = load(MIN, &[]).unwrap();
        assert!(c.file.listen.address.ip().is_loopback());
        assert!(c.file.admin.address.ip().is_loopback());
        assert!(c.file.timeouts.deadline < Duration::from_secs(10));
        assert_eq!(c.file.upstream.tls_roots, TlsRoots::Webpki);
    }

    #[test]
    fn misspelled_key_is_named() {
        let err = load("[listen]\nadress = \"127.0.0.1:1\"\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("listen"), "{msg}");
        assert!(msg.contains("adress"), "{msg}");
    }

    #[test]
    fn bad_duration_is_named() {
        let err = load(&format!("{MIN}[timeouts]\nper_try = \"3 parsecs\"\n"), &[]).unwrap_err();
        assert!(err.to_string().contains("timeouts.per_try"), "{err}");
    }

    #[test]
    fn url_without_scheme_is_named() {
        let err = load("[upstream]\nurl = \"backend.example.com\"\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("upstream.url") && msg.contains("scheme"),
            "{msg}"
        );
    }

    #[test]
    fn env_beats_file_and_flags_beat_env() {
        let text = format!("{MIN}[listen]\naddress = \"127.0.0.1:1000\"\nmax_connections = 5\n");
        let env = vec![
            (
                "DATALAYER_SIDECAR_LISTEN_ADDRESS".to_string(),
                "127.0.0.1:2000".to_string(),
            ),
            (
                "DATALAYER_SIDECAR_TIMEOUTS_PER_TRY".to_string(),
                "1s".to_string(),
            ),
        ];
        let c = Config::from_toml_str(&text, Path::new("t"), &env, &Overrides::default()).unwrap();
        assert_eq!(c.file.listen.address.port(), 2000);
        assert_eq!(c.file.listen.max_connections, 5);
        assert_eq!(c.file.timeouts.per_try, Duration::from_secs(1));
        let flags = Overrides {
            listen: Some("127.0.0.1:3000".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::from_toml_str(&text, Path::new("t"), &env, &flags).unwrap();
        assert_eq!(c.file.listen.address.port(), 3000);
    }

    #[test]
    fn unknown_env_key_is_named() {
        let err = load(MIN, &[("DATALAYER_SIDECAR_LISTEN_ADRESS", "x")]).unwrap_err();
        assert!(err.to_string().contains("adress"), "{err}");
        let err = load(MIN, &[("DATALAYER_SIDECAR_NOPE_X", "1")]).unwrap_err();
        assert!(
            err.to_string().contains("DATALAYER_SIDECAR_NOPE_X"),
            "{err}"
        );
    }

    #[test]
    fn api_key_is_redacted_when_printed() {
        let c = load(&format!("{MIN}[spool]\napi_key = \"sk-secret\"\n"), &[]).unwrap();
        let printed = c.to_toml();
        assert!(!printed.contains("sk-secret"));
        assert!(printed.contains("<redacted>"));
    }

    /// Found on review: a key that is not a valid header value was dropped
    /// silently, and replays then went out without credentials.
    #[test]
    fn an_invalid_spool_api_key_is_refused() {
        let err = load(
            &format!("{MIN}[spool]\nstore_credentials = false\napi_key = \"sk-line\\nbreak\"\n"),
            &[],
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("spool.api_key"), "{msg}");
        assert!(
            !msg.contains("sk-line"),
            "the key itself is never printed: {msg}"
        );
    }

    #[test]
    fn per_try_longer_than_deadline_is_refused() {
        let err = load(
            &format!("{MIN}[timeouts]\nper_try = \"9s\"\ndeadline = \"2s\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("timeouts.per_try"), "{err}");
    }
}
