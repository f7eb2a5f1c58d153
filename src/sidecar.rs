//! Wiring: build every shared piece from the config, bind the listeners,
//! serve until shutdown, drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
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

/// Run the sidecar until `shutdown` turns true, then drain and return.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> Result<(), RunError> {
    let listener = bind("listen.address", cfg.file.listen.address).await?;
    let admin_listener = bind("admin.address", cfg.file.admin.address).await?;
    run_with_listeners(cfg, listener, admin_listener, shutdown).await
}

/// Like [`run`], on listeners the caller bound (tests bind port 0).
pub async fn run_with_listeners(
    cfg: Config,
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
    let http = client::build(&file.upstream)?;
    let upstream = Upstream::new(http, file.classify.max_graphql_response.as_u64());
    let prepare = PrepareShared::new(&cfg).map_err(|e| RunError::Start(e.to_string()))?;
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
        sensitive: stack::sensitive_headers(&file.spool.api_key_header),
    };

    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        breaker,
        budget,
        ready: false.into(),
        config_toml: cfg.to_toml(),
    });
    let (admin_stop_tx, admin_stop) = watch::channel(false);
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin_state.clone(),
        admin_stop,
    ));

    let local = listener
        .local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string());
    tracing::info!(
        listen = %local,
        upstream = %cfg.file.upstream.url,
        admin = %cfg.file.admin.address,
        routes = routes.all().len(),
        version = env!("CARGO_PKG_VERSION"),
        "datalayer-sidecar started"
    );
    admin_state.ready.store(true, Ordering::Release);

    // Readiness drops the moment shutdown starts, before the drain.
    let mut watch_ready = shutdown.clone();
    let ready_state = admin_state.clone();
    tokio::spawn(async move {
        server::shutdown_requested(&mut watch_ready).await;
        ready_state.ready.store(false, Ordering::Release);
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

    let _ = admin_stop_tx.send(true);
    let _ = admin_task.await;
    tracing::info!("datalayer-sidecar stopped");
    Ok(())
}
