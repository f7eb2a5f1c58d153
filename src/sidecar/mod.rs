//! Wiring: build a config generation's stack, bind the listeners, serve
//! until shutdown, apply reloads in order, drain.
//!
//! One task applies reloads (SIGHUP and `POST /reload` queue to it), so two
//! reloads never race and a reload asked for during one runs after it. A
//! reload builds the next generation next to the one in force, carrying
//! over every piece whose settings did not change — the breaker and its
//! state, the retry budget, the upstream pool and its slots — and swaps it
//! in; the spool and its worker keep running (the worker reads the new
//! generation at its next delivery).
//!
//! Here: start-up, the pieces every generation shares or carries over, and
//! the accept loop. Applying a reload is in [`reload`], what follows the
//! accept loop at shutdown in [`exit`].

mod exit;
mod reload;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, OnceLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::Service;

use crate::admin::status::{SAMPLE_EVERY, StatusBoard};
use crate::admin::{self, AdminState, AdminView, Phase};
use crate::breaker::Breaker;
use crate::classify::Classifier;
use crate::config::{Config, Source};
use crate::edge::{AccessBody, EdgeShared};
use crate::error::Error;
use crate::generation::{Current, Generation, Live, ReloadReport, ReloadRequest, Trigger};
use crate::metrics::Metrics;
use crate::proxy::client::{self, Upstream};
use crate::proxy::forward::PrepareShared;
use crate::proxy::server;
use crate::retry::RetryBudget;
use crate::route::Routes;
use crate::spool::Spool;
use crate::spool::drain::{Drain, ReplayView};
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
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Move a corrupt spool store aside and start with an empty one.
    pub quarantine_corrupt_spool: bool,
    /// Where the config came from, so SIGHUP and `POST /reload` can read
    /// it again (none: reloads are refused).
    pub source: Option<Source>,
    /// Reload on SIGHUP (the binary; tests in one process use `/reload`).
    pub sighup: bool,
}

/// Run the sidecar until `shutdown` turns true, then drain and return.
pub async fn run(
    cfg: Config,
    opts: Options,
    shutdown: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let listener = bind("listen.address", cfg.listen.address).await?;
    let admin_listener = bind("admin.address", cfg.admin_address).await?;
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
    serve_generations(cfg, opts, listener, admin_listener, shutdown, stack::build).await
}

/// The pieces that outlive every generation.
struct Core {
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
    admin: Arc<AdminState>,
    spool: Option<Spool>,
    replay: Option<Arc<ArcSwap<ReplayView>>>,
    worker: Option<JoinHandle<()>>,
    worker_stop: watch::Receiver<bool>,
    quarantine: bool,
}

impl Core {
    /// Open the spool when a route of `cfg` spools and it is not open yet
    /// (at start, or when a reload adds the first spooling route). Off the
    /// async threads: checking a large store takes a while, and the admin
    /// port must keep answering meanwhile.
    async fn ensure_spool(&mut self, cfg: &Config) -> Result<(), RunError> {
        if self.spool.is_some() || !cfg.routes.iter().any(|r| r.spools()) {
            return Ok(());
        }
        self.admin.advance_phase(Phase::OpeningSpool);
        let settings = cfg.spool.clone();
        let sensitive = stack::sensitive_headers(&settings.api_key_header);
        let metrics = self.metrics.spool.clone();
        let quarantine = self.quarantine;
        let spool = tokio::task::spawn_blocking(move || {
            Spool::open(&settings, &sensitive, metrics, quarantine)
        })
        .await
        .map_err(|e| RunError::Start(format!("opening the spool: {e}")))??;
        tracing::info!(
            path = %cfg.spool.path.display(),
            waiting = spool.store().waiting(),
            disk_bytes = spool.store().disk().disk_bytes,
            "spool open"
        );
        let _ = self.admin.spool.set(spool.clone());
        self.spool = Some(spool);
        Ok(())
    }

    /// The shared pieces of a generation for `cfg`, reusing those of
    /// `prev` whose settings are unchanged.
    fn shared(&self, cfg: &Config, prev: Option<(&Config, &Shared)>) -> Result<Shared, RunError> {
        let routes = Routes::new(cfg.routes.clone());
        let breaker = match prev {
            Some((_, p)) if *p.breaker.params() == cfg.breaker => p.breaker.clone(),
            _ => Breaker::new(cfg.breaker.clone(), self.metrics.breaker.clone()),
        };
        let budget = match prev {
            Some((c, p)) if c.budget == cfg.budget => p.budget.clone(),
            _ => Arc::new(RetryBudget::new(&cfg.budget)),
        };
        let same_pool = |c: &Config| {
            client::UpstreamParams {
                max_concurrent_requests: cfg.upstream.max_concurrent_requests,
                ..c.upstream.clone()
            } == cfg.upstream
        };
        let http = match prev {
            Some((c, p)) if same_pool(c) => p.upstream.client().clone(),
            _ => client::build(&cfg.upstream)?,
        };
        // Requests of the generation before keep the slots they hold; a
        // new count starts a new set of slots.
        let upstream_slots = match prev {
            Some((c, p))
                if c.upstream.max_concurrent_requests == cfg.upstream.max_concurrent_requests =>
            {
                p.upstream_slots.clone()
            }
            _ => Arc::new(tokio::sync::Semaphore::new(
                cfg.upstream.max_concurrent_requests,
            )),
        };
        let prepare = PrepareShared::new(
            routes,
            &cfg.upstream.target,
            cfg.limits,
            cfg.spool.commit_margin,
            &self.metrics,
        )
        .map_err(|e| RunError::Start(e.to_string()))?;
        Ok(Shared {
            prepare: Arc::new(prepare),
            edge: Arc::new(EdgeShared {
                metrics: self.metrics.clone(),
                breaker: breaker.clone(),
                access_log: cfg.log.access,
                board: self.board.clone(),
            }),
            classifier: Arc::new(Classifier::new(&cfg.classify)),
            breaker,
            budget,
            metrics: self.metrics.clone(),
            upstream: Upstream::new(http, cfg.classify.max_graphql_response),
            spool: self.spool.clone(),
            upstream_slots,
            sensitive: stack::sensitive_headers(&cfg.spool.api_key_header),
        })
    }

    /// Hand the replay worker this generation (starting it with the first
    /// generation that has a spool).
    fn replay(&mut self, cfg: &Config, shared: &Shared) {
        let Some(spool) = &self.spool else {
            return;
        };
        let view = Arc::new(ReplayView {
            service: stack::replay_service(shared),
            prepare: shared.prepare.clone(),
            breaker: shared.breaker.clone(),
            api_key: cfg.spool.replay_key.clone(),
            replay: cfg.spool.replay.clone(),
        });
        spool.apply(&cfg.spool, &shared.sensitive);
        match &self.replay {
            Some(current) => current.store(view),
            None => {
                let current = Arc::new(ArcSwap::new(view));
                let drain = Drain {
                    spool: spool.clone(),
                    view: current.clone(),
                };
                let run = move |stop| drain.clone().run(stop);
                self.worker = Some(tokio::spawn(crate::spool::supervise::supervise(
                    spool.clone(),
                    run,
                    self.worker_stop.clone(),
                )));
                self.replay = Some(current);
            }
        }
    }

    fn admin_view<S>(&self, g: &Generation<S>, last_reload: Option<ReloadReport>) {
        self.admin.view.store(Some(Arc::new(AdminView {
            generation: g.number,
            config_toml: g.config.to_toml(),
            breaker: g.shared.breaker.clone(),
            budget: g.shared.budget.clone(),
            routes: g.shared.prepare.route_metrics.clone(),
            upstream: g.shared.prepare.target.origin(),
            last_reload,
            allowed_hosts: g.config.admin_allowed_hosts.clone(),
        })));
        self.metrics.generation.set(g.number as i64);
    }

    /// Build generation `number` for `cfg`: open the spool if a route now
    /// spools, carry over from `prev` every piece whose settings did not
    /// change, and hand the replay worker the result. Nothing is swapped in
    /// here: on an error the generation in force stays as it was.
    async fn start_generation<S, F>(
        &mut self,
        number: u64,
        cfg: Config,
        prev: Option<&Generation<S>>,
        build: F,
    ) -> Result<Generation<S>, RunError>
    where
        F: Fn(Shared) -> S,
    {
        self.ensure_spool(&cfg).await?;
        let shared = self.shared(&cfg, prev.map(|p| (&*p.config, &p.shared)))?;
        self.replay(&cfg, &shared);
        Ok(Generation {
            number,
            service: build(shared.clone()),
            config: Arc::new(cfg),
            shared,
        })
    }
}

/// The admin port's task and what stops it; it outlives the client
/// listener so probes see the drain.
struct AdminPort {
    state: Arc<AdminState>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The bound address, for the start-up line.
    local: String,
}

impl AdminPort {
    /// Answer on `listener` from now on, before the spool is opened, so a
    /// startup probe sees the phase (503) while the spool is checked.
    fn start(
        listener: TcpListener,
        metrics: &Arc<Metrics>,
        board: &Arc<StatusBoard>,
        reload: Option<mpsc::UnboundedSender<ReloadRequest>>,
    ) -> AdminPort {
        let state = Arc::new(AdminState {
            metrics: metrics.clone(),
            spool: OnceLock::new(),
            phase: AtomicU8::new(Phase::Starting as u8),
            view: ArcSwapOption::empty(),
            board: board.clone(),
            reload,
        });
        let local = listener
            .local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string());
        let (stop, admin_stop) = watch::channel(false);
        let task = tokio::spawn(admin::serve(listener, state.clone(), admin_stop));
        AdminPort {
            state,
            stop,
            task,
            local,
        }
    }
}

/// Serve with the stack `build` makes for each generation.
async fn serve_generations<S, F>(
    cfg: Config,
    opts: Options,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: watch::Receiver<bool>,
    build: F,
) -> Result<(), RunError>
where
    F: Fn(Shared) -> S + Copy + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<AccessBody>, Error = Error>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    warn_beyond_loopback(&cfg);
    // Before anything slow: until this handler exists, SIGHUP would end
    // the process.
    let (reload_tx, reload_rx) = mpsc::unbounded_channel::<ReloadRequest>();
    if opts.sighup {
        spawn_sighup(reload_tx.clone())?;
    }
    let metrics = Metrics::new();
    let board = Arc::new(StatusBoard::new(metrics.outcomes.clone()));
    // Without a source, `POST /reload` is refused and only a SIGHUP handler
    // (if any) keeps the queue open.
    let reload = opts.source.as_ref().map(|_| reload_tx);
    let admin = AdminPort::start(admin_listener, &metrics, &board, reload);
    for warning in &cfg.warnings {
        tracing::warn!(%warning, "config");
    }

    let (worker_stop_tx, worker_stop) = watch::channel(false);
    let mut core = Core {
        metrics: metrics.clone(),
        board: board.clone(),
        admin: admin.state.clone(),
        spool: None,
        replay: None,
        worker: None,
        worker_stop,
        quarantine: opts.quarantine_corrupt_spool,
    };
    // The spool is opened before the listener serves anything: a store that
    // cannot be opened is a refusal to start, never a silent loss later.
    let first = core.start_generation(1, cfg, None, build).await?;
    core.admin_view(&first, None);
    let current: Current<S> = Arc::new(ArcSwap::from_pointee(first));
    log_started(
        &current.load(),
        &listener,
        &admin.local,
        core.spool.is_some(),
        opts.source.is_some(),
    );
    // Listeners bound, spool open and checked, worker running.
    admin.state.set_phase(Phase::Serving);

    let shutdown_began = watch_shutdown_start(shutdown.clone(), admin.state.clone());
    let sampler = tokio::spawn(sample(board, admin.state.clone()));
    let reloader = reload::spawn_reloader(
        core,
        current.clone(),
        opts.source.clone(),
        reload_rx,
        shutdown.clone(),
        build,
    );
    serve_clients(listener, &current, metrics, shutdown).await;

    let core = reloader
        .await
        .map_err(|e| RunError::Start(format!("reload task: {e}")))?;
    sampler.abort();
    exit::stop(core, current, &shutdown_began, worker_stop_tx, admin).await;
    Ok(())
}

/// Warn about each listener reachable from beyond this host.
fn warn_beyond_loopback(cfg: &Config) {
    for (key, addr) in [
        ("listen.address", cfg.listen.address),
        ("admin.address", cfg.admin_address),
    ] {
        if !addr.ip().is_loopback() {
            tracing::warn!(key, %addr, "listening beyond loopback: anything that can reach this address can use the sidecar");
        }
    }
}

/// The start-up line: where the sidecar listens and what it serves.
fn log_started<S>(
    g: &Generation<S>,
    listener: &TcpListener,
    admin: &str,
    spool: bool,
    reloads: bool,
) {
    let local = listener
        .local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string());
    tracing::info!(
        listen = %local,
        upstream = %g.config.file.upstream.url,
        admin = %admin,
        preset = g.config.preset.as_str(),
        routes = g.config.routes.len(),
        spool,
        reload = if reloads { "sighup, POST /reload" } else { "off" },
        version = env!("CARGO_PKG_VERSION"),
        "datalayer-sidecar started"
    );
}

/// When shutdown starts: readiness drops at once, before the drain, and
/// the moment is kept, since the grace period covers the live drain and
/// then the spool's.
fn watch_shutdown_start(
    mut shutdown: watch::Receiver<bool>,
    admin: Arc<AdminState>,
) -> Arc<OnceLock<Instant>> {
    let began: Arc<OnceLock<Instant>> = Arc::default();
    let set = began.clone();
    tokio::spawn(async move {
        crate::shutdown::shutdown_requested(&mut shutdown).await;
        admin.set_phase(Phase::Draining);
        let _ = set.set(Instant::now());
    });
    began
}

/// The accept loop: each request goes through the generation in force when
/// it arrives; returns once shutdown began and the live requests are done
/// (or the grace period of the generation then in force is over).
async fn serve_clients<S>(
    listener: TcpListener,
    current: &Current<S>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) where
    S: Service<Request<Incoming>, Response = Response<AccessBody>, Error = Error>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let grace_of = current.clone();
    server::serve(
        listener,
        &current.load().config.listen.clone(),
        |peer| Live::new(current.clone(), peer),
        metrics,
        shutdown,
        move || grace_of.load().config.shutdown_grace,
    )
    .await;
}

/// Queue a reload on every SIGHUP.
fn spawn_sighup(tx: mpsc::UnboundedSender<ReloadRequest>) -> Result<(), RunError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())
            .map_err(|e| RunError::Start(format!("cannot listen for SIGHUP: {e}")))?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config");
                if tx
                    .send(ReloadRequest {
                        trigger: Trigger::Sighup,
                        reply: None,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = tx;
    Ok(())
}

/// Feed the status page's chart and last-minute figures.
async fn sample(board: Arc<StatusBoard>, admin: Arc<AdminState>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let depth = admin.spool.get().map_or(0, |s| s.store().waiting());
        board.sample(depth);
    }
}
