//! The file schema: what an operator may write in the TOML file, with the
//! documented default of every key (`config/sidecar.toml` shows them all).
//!
//! These structs are only the file's shape. Nothing outside [`super`] reads
//! them at run time: [`super::validate`] turns them into the runtime
//! parameter types each layer is built with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::classify::ClassifyParams;
use crate::proxy::client::TlsRoots;
use crate::route::file::{Preset, RouteFile};
use crate::telemetry::LogFormat;

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
    /// Host names the admin port answers to beyond IP literals and
    /// loopback names (`localhost`): the name a Service or a proxy reaches
    /// it by. Any other name in `Host` is refused (DNS rebinding).
    pub allowed_hosts: Vec<String>,
}

impl Default for AdminFile {
    fn default() -> Self {
        AdminFile {
            address: SocketAddr::from(([127, 0, 0, 1], 9901)),
            allowed_hosts: Vec::new(),
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
    /// Most root fields (aliases) in one GraphQL operation; more gets 400
    /// `too_many_root_fields`. At most 10,000.
    pub max_root_fields: usize,
    /// Most members of a GraphQL request's `variables`; more gets 400
    /// `too_many_variables`.
    pub max_variables: usize,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_request_body: ByteSize::mib(128),
            max_graphql_body: ByteSize::mib(16),
            // The SDK batches a handful of steps per request, 16 variables
            // each.
            max_root_fields: 1000,
            max_variables: 20_000,
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
        let p = ClassifyParams::default();
        ClassifyFile {
            transient_statuses: p.transient_statuses,
            transient_graphql_codes: p.transient_graphql_codes,
            permanent_item_messages: p.permanent_item_messages,
            max_graphql_response: ByteSize::b(p.max_graphql_response),
        }
    }
}

/// Which store holds the spool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolBackendKind {
    /// A SQLite file at `spool.path`.
    #[default]
    Sqlite,
    /// A PostgreSQL database at `spool.postgres_url`, shared by replicas.
    Postgres,
}

/// `[spool]`: the durable store-and-forward spool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolFile {
    /// Where the spool lives: `sqlite` (a file on this machine, the
    /// default) or `postgres` (a database shared by every replica).
    pub backend: SpoolBackendKind,
    /// SQLite database file; its directory is created if missing.
    pub path: PathBuf,
    /// `postgres://user[:password]@host[:port]/db[?sslmode=...]` for
    /// `backend = "postgres"`. Never printed or logged with its password.
    pub postgres_url: Option<String>,
    /// A file holding the database password (first line), instead of one
    /// in the URL; `PGPASSWORD` works too.
    pub postgres_password_file: Option<PathBuf>,
    /// Extra PEM CA certificates trusted for the database's TLS
    /// certificate (besides the built-in roots).
    pub postgres_ca_file: Option<PathBuf>,
    /// Connections to the database at most.
    pub postgres_pool: usize,
    /// How long a replica may hold an entry it is delivering before
    /// another replica may take it (longer than any route's deadline).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
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
    /// Most waiting step writes (`ingestStep` aliases) joined into one
    /// replayed request; 1 sends each entry on its own.
    pub replay_batch: usize,
    /// Most body bytes of the entries joined into one replayed request.
    pub replay_batch_bytes: ByteSize,
    /// HTTP statuses with which the backend refuses a write for its own
    /// content: the write moves to dead letters. Any other refusal (401,
    /// 403, 404, a TLS certificate the roots reject, ...) says the system is
    /// wrong, not the write: the queue pauses until a probe goes through.
    pub dead_letter_statuses: Vec<u16>,
}

impl Default for SpoolFile {
    fn default() -> Self {
        SpoolFile {
            backend: SpoolBackendKind::Sqlite,
            postgres_url: None,
            postgres_password_file: None,
            postgres_ca_file: None,
            postgres_pool: 8,
            lease: Duration::from_secs(30),
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
            replay_batch: 50,
            replay_batch_bytes: ByteSize::mib(1),
            dead_letter_statuses: vec![400, 409, 410, 413, 422],
        }
    }
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
    /// After SIGTERM/SIGINT, in-flight requests get this long to finish;
    /// with `drain_spool`, what is left of it goes to delivering the spool.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// Keep delivering the spool after the last client request, until it
    /// is empty or the grace period is over (SQLite spool; with PostgreSQL
    /// every acknowledged write is already in the shared store).
    pub drain_spool: bool,
}

impl Default for ShutdownFile {
    fn default() -> Self {
        ShutdownFile {
            grace_period: Duration::from_secs(20),
            drain_spool: true,
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
