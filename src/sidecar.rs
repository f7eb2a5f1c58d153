//! Wiring: build every shared piece from the config, bind the listeners,
//! serve until shutdown, drain.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use crate::proxy::forward::Target;
use crate::spool::Spool;
use crate::spool::drain::Drain;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminState, Phase};
use crate::breaker::Breaker;
use crate::classify::Classifier;
use crate::config::Config;
use crate::edge::EdgeShared;
use crate::metrics::Metrics;
use crate::proxy::client::{self, Upstream};
use crate::proxy::forward::PrepareShared;
use crate::proxy::server;
use crate::retry::RetryBudget;
use crate::route::Routes;
use crate::stack::{self, Shared};

/// Why the sidecar could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not be bound.
    #[error("config key `{key}`: cannot listen on {addr}: {source}")]
    Bind {
        /// `listen.address` or `admin.address`.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error (e.g. address in use).
        #[source]
        source: std::io::Error,
    },
    /// The upstream client could not be built.
    #[error(transparent)]
    Client(#[from] client::ClientError),
    /// The spool store could not be opened (corrupt, unreadable, ...).
    #[error(transparent)]
    Spool(#[from] crate::spool::store::StoreError),
    /// Anything else during start-up.
    #[error("{0}")]
    Start(String),
}

impl RunError {
    /// Whether the operator's configuration is at fault (exit 64).
    pub fn is_config(&self) -> bool {
        matches!(self, RunError::Bind { .. } | RunError::Client(_))
    }
}

/// Bind `addr`, naming `key` on failure.
pub async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { key, addr, source })
}

/// Start-up choices that are not configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Move a corrupt spool store aside and start with an empty one.
    pub quarantine_corrupt_spool: bool,
}

/// Run the sidecar until `shutdown` turns true, then drain and return.
pub async fn run(
    cfg: Config,
    opts: Options,
    shutdown: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let listener = bind("listen.address", cfg.file.listen.address).await?;
    let admin_listener = bind("admin.address", cfg.file.admin.address).await?;
    run_with_listeners(cfg, opts, listener, admin_listener, shutdown).await
}

/// Like [`run`], on listeners the caller bound (tests bind port 0).
pub async fn run_with_listeners(
    cfg: Config,
    opts: Options,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let file = &cfg.file;
    for (key, addr) in [
        ("listen.address", file.listen.address),
        ("admin.address", file.admin.address),
    ] {
        if !addr.ip().is_loopback() {
            tracing::warn!(key, %addr, "listening beyond loopback: anything that can reach this address can use the sidecar");
        }
    }
    let routes = Routes::new(cfg.routes.clone());
    let metrics = Metrics::new(routes.all());
    let breaker = Breaker::new(file.breaker.clone(), metrics.breaker.clone());
    let budget = Arc::new(RetryBudget::new(
        file.retry.budget_window,
        file.retry.budget_min_per_sec,
        file.retry.budget_ratio,
    ));
    let http = client::build(&file.upstream, &cfg.upstream)?;
    let upstream = Upstream::new(http, file.classify.max_graphql_response.as_u64());
    let prepare = PrepareShared::new(&cfg).map_err(|e| RunError::Start(e.to_string()))?;
    let sensitive = stack::sensitive_headers(&file.spool.api_key_header);

    // The admin port answers from here on, so a startup probe sees the
    // phase (503) while the spool is opened and checked.
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        breaker: breaker.clone(),
        budget: budget.clone(),
        spool: OnceLock::new(),
        phase: AtomicU8::new(Phase::Starting as u8),
        config_toml: cfg.to_toml(),
    });
    let admin_local = admin_listener
        .local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string());
    let (admin_stop_tx, admin_stop) = watch::channel(false);
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin_state.clone(),
        admin_stop,
    ));
    for warning in &cfg.warnings {
        tracing::warn!(%warning, "config");
    }

    // Opened before the listener serves anything: a store that cannot be
    // opened is a refusal to start, never a silent loss later. Off the
    // async threads: checking a large store takes a while, and the admin
    // port must keep answering meanwhile.
    let spool = if routes.all().iter().any(|r| r.spools()) {
        admin_state.set_phase(Phase::OpeningSpool);
        let (spool_cfg, sensitive, spool_metrics) =
            (file.spool.clone(), sensitive.clone(), metrics.spool.clone());
        let quarantine = opts.quarantine_corrupt_spool;
        let spool = tokio::task::spawn_blocking(move || {
            Spool::open(&spool_cfg, &sensitive, spool_metrics, quarantine)
        })
        .await
        .map_err(|e| RunError::Start(format!("opening the spool: {e}")))??;
        tracing::info!(
            path = %file.spool.path.display(),
            waiting = spool.store().totals.entries.load(Ordering::Relaxed),
            disk_bytes = spool.store().totals.disk_bytes.load(Ordering::Relaxed),
            "spool open"
        );
        let _ = admin_state.spool.set(spool.clone());
        Some(spool)
    } else {
        None
    };
    let shared = Shared {
        prepare: Arc::new(prepare),
        edge: Arc::new(EdgeShared {
            metrics: metrics.clone(),
            breaker: breaker.clone(),
            access_log: file.log.access,
        }),
        classifier: Arc::new(Classifier::new(&file.classify)),
        breaker: breaker.clone(),
        budget: budget.clone(),
        metrics: metrics.clone(),
        upstream,
        spool: spool.clone(),
        upstream_slots: Arc::new(tokio::sync::Semaphore::new(
            file.upstream.max_concurrent_requests,
        )),
        sensitive,
    };

    let (worker_stop_tx, worker_stop) = watch::channel(false);
    let worker = spool.clone().map(|spool| {
        let api_key = if file.spool.store_credentials {
            None
        } else {
            file.spool.api_key.as_deref().and_then(|k| {
                Some((
                    http::HeaderName::from_bytes(file.spool.api_key_header.as_bytes()).ok()?,
                    http::HeaderValue::from_str(k).ok()?,
                ))
            })
        };
        let drain = Drain {
            spool,
            service: stack::replay_service(&shared),
            routes: routes.clone(),
            target: Arc::new(
                Target::new(&cfg.upstream).map_err(|e| RunError::Start(e.to_string()))?,
            ),
            breaker: shared.breaker.clone(),
            api_key,
            backoff: (
                file.spool.replay_backoff_base,
                file.spool.replay_backoff_max,
            ),
            concurrency: file.spool.replay_concurrency,
            dead_letter_statuses: file.spool.dead_letter_statuses.clone(),
        };
        Ok::<_, RunError>(tokio::spawn(drain.run(worker_stop)))
    });
    let worker = worker.transpose()?;

    let local = listener
        .local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string());
    tracing::info!(
        listen = %local,
        upstream = %cfg.file.upstream.url,
        admin = %admin_local,
        preset = cfg.file.preset.as_str(),
        routes = routes.all().len(),
        spool = spool.is_some(),
        version = env!("CARGO_PKG_VERSION"),
        "datalayer-sidecar started"
    );
    // Listeners bound, spool open and checked, worker running.
    admin_state.set_phase(Phase::Serving);

    // Readiness drops the moment shutdown starts, before the drain.
    let mut watch_ready = shutdown.clone();
    let ready_state = admin_state.clone();
    tokio::spawn(async move {
        server::shutdown_requested(&mut watch_ready).await;
        ready_state.set_phase(Phase::Draining);
    });

    server::serve(
        listener,
        &cfg.file.listen,
        |peer| stack::build(&shared, Some(peer)),
        metrics,
        shutdown,
        cfg.file.shutdown.grace_period,
    )
    .await;

    // Live requests are done (or past the grace period); now the replay
    // worker stops between entries, then the store's writer finishes its
    // queue and checkpoints when the last handle is dropped.
    let _ = worker_stop_tx.send(true);
    if let Some(w) = worker {
        let _ = w.await;
    }
    drop(shared);
    drop(spool);
    let _ = admin_stop_tx.send(true);
    let _ = admin_task.await;
    tracing::info!("datalayer-sidecar stopped");
    Ok(())
}
