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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tower::Service;

use crate::admin::status::{SAMPLE_EVERY, StatusBoard};
use crate::admin::{self, AdminState, AdminView, Phase};
use crate::breaker::Breaker;
use crate::classify::Classifier;
use crate::clock::now_ms;
use crate::config::{Config, Source};
use crate::edge::{AccessBody, EdgeShared};
use crate::error::Error;
use crate::generation::{Current, Generation, Live, ReloadReport, ReloadRequest, Trigger};
use crate::metrics::{Metrics, ReloadLabels};
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
            waiting = spool.store().totals.entries.load(Ordering::Relaxed),
            disk_bytes = spool.store().totals.disk_bytes.load(Ordering::Relaxed),
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
    for (key, addr) in [
        ("listen.address", cfg.listen.address),
        ("admin.address", cfg.admin_address),
    ] {
        if !addr.ip().is_loopback() {
            tracing::warn!(key, %addr, "listening beyond loopback: anything that can reach this address can use the sidecar");
        }
    }
    // Before anything slow: until this handler exists, SIGHUP would end
    // the process.
    let (reload_tx, mut reload_rx) = mpsc::unbounded_channel::<ReloadRequest>();
    if opts.sighup {
        spawn_sighup(reload_tx.clone())?;
    }
    let metrics = Metrics::new();
    let board = Arc::new(StatusBoard::default());

    // The admin port answers from here on, so a startup probe sees the
    // phase (503) while the spool is opened and checked.
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        spool: OnceLock::new(),
        phase: AtomicU8::new(Phase::Starting as u8),
        view: ArcSwapOption::empty(),
        board: board.clone(),
        reload: opts.source.as_ref().map(|_| reload_tx.clone()),
    });
    drop(reload_tx);
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

    let (worker_stop_tx, worker_stop) = watch::channel(false);
    let mut core = Core {
        metrics: metrics.clone(),
        board: board.clone(),
        admin: admin_state.clone(),
        spool: None,
        replay: None,
        worker: None,
        worker_stop,
        quarantine: opts.quarantine_corrupt_spool,
    };
    // Opened before the listener serves anything: a store that cannot be
    // opened is a refusal to start, never a silent loss later.
    core.ensure_spool(&cfg).await?;
    let shared = core.shared(&cfg, None)?;
    core.replay(&cfg, &shared);
    let first = Generation {
        number: 1,
        service: build(shared.clone()),
        config: Arc::new(cfg),
        shared,
    };
    core.admin_view(&first, None);
    let current: Current<S> = Arc::new(ArcSwap::from_pointee(first));

    let local = listener
        .local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string());
    {
        let g = current.load();
        tracing::info!(
            listen = %local,
            upstream = %g.config.file.upstream.url,
            admin = %admin_local,
            preset = g.config.preset.as_str(),
            routes = g.config.routes.len(),
            spool = core.spool.is_some(),
            reload = if opts.source.is_some() { "sighup, POST /reload" } else { "off" },
            version = env!("CARGO_PKG_VERSION"),
            "datalayer-sidecar started"
        );
    }
    // Listeners bound, spool open and checked, worker running.
    admin_state.set_phase(Phase::Serving);

    // Readiness drops the moment shutdown starts, before the drain.
    let mut watch_ready = shutdown.clone();
    let ready_state = admin_state.clone();
    tokio::spawn(async move {
        crate::shutdown::shutdown_requested(&mut watch_ready).await;
        ready_state.set_phase(Phase::Draining);
    });
    let sampler = tokio::spawn(sample(board.clone(), admin_state.clone()));

    // The one task that applies reloads, in the order they were asked for.
    let reloader = {
        let current = current.clone();
        let source = opts.source.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let req = tokio::select! {
                    r = reload_rx.recv() => match r {
                        Some(r) => r,
                        None => break,
                    },
                    () = crate::shutdown::shutdown_requested(&mut stop) => break,
                };
                let report = match &source {
                    Some(source) => reload(&mut core, &current, source, req.trigger, build).await,
                    None => continue,
                };
                if let Some(reply) = req.reply {
                    let _ = reply.send(report);
                }
            }
            core
        })
    };

    // When shutdown began: the grace period covers the live drain and then
    // the spool's.
    let stop_at: Arc<std::sync::OnceLock<tokio::time::Instant>> = Arc::default();
    {
        let (mut rx, stop_at) = (shutdown.clone(), stop_at.clone());
        tokio::spawn(async move {
            crate::shutdown::shutdown_requested(&mut rx).await;
            let _ = stop_at.set(tokio::time::Instant::now());
        });
    }
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

    // Live requests are done (or past the grace period); now the replay
    // worker stops between entries, then the store's writer finishes its
    // queue and checkpoints when the last handle is dropped.
    let core = reloader
        .await
        .map_err(|e| RunError::Start(format!("reload task: {e}")))?;
    sampler.abort();
    let last = current.load().config.clone();
    if last.shutdown_drain_spool
        && core.worker.is_some()
        && let Some(spool) = core
            .spool
            .as_ref()
            .filter(|s| s.store().postgres().is_none())
    {
        let began = stop_at
            .get()
            .copied()
            .unwrap_or_else(tokio::time::Instant::now);
        drain_before_exit(spool, began + last.shutdown_grace).await;
    }
    let _ = worker_stop_tx.send(true);
    let Core { worker, spool, .. } = core;
    if let Some(w) = worker {
        let _ = w.await;
    }
    if let Some(shared) = spool.as_ref().and_then(|s| s.store().postgres()) {
        hand_off(shared).await;
    }
    drop(current);
    drop(spool);
    let _ = admin_stop_tx.send(true);
    let _ = admin_task.await;
    tracing::info!("datalayer-sidecar stopped");
    Ok(())
}

/// Apply one reload: read, validate, build, swap. An invalid config, or a
/// generation that cannot be built (a CA file that does not parse, a spool
/// that cannot be opened), changes nothing.
async fn reload<S, F>(
    core: &mut Core,
    current: &Current<S>,
    source: &Source,
    trigger: Trigger,
    build: F,
) -> ReloadReport
where
    F: Fn(Shared) -> S,
{
    let cur = current.load_full();
    let refused = |error: String, key: Option<String>| ReloadReport {
        result: "invalid",
        generation: cur.number,
        trigger,
        at_ms: now_ms(),
        restart_needed: Vec::new(),
        error: Some(error),
        key,
    };
    let next = source.load().and_then(|next| cur.config.reload(next));
    let (next, restart_needed) = match next {
        Ok(n) => n,
        Err(e) => {
            let report = refused(e.to_string(), e.key_name().map(str::to_string));
            return finish(core, &cur, report);
        }
    };
    let built = match core.ensure_spool(&next).await {
        Ok(()) => core.shared(&next, Some((&cur.config, &cur.shared))),
        Err(e) => Err(e),
    };
    let shared = match built {
        Ok(s) => s,
        Err(e) => return finish(core, &cur, refused(e.to_string(), None)),
    };
    core.replay(&next, &shared);
    crate::telemetry::apply(&next.log);
    let number = cur.number + 1;
    let next = Generation {
        number,
        service: build(shared.clone()),
        config: Arc::new(next),
        shared,
    };
    let report = ReloadReport {
        result: "applied",
        generation: number,
        trigger,
        at_ms: now_ms(),
        restart_needed,
        error: None,
        key: None,
    };
    core.admin_view(&next, Some(report.clone()));
    current.store(Arc::new(next));
    for warning in &current.load().config.warnings {
        tracing::warn!(%warning, "config");
    }
    core.metrics
        .reloads
        .get_or_create(&ReloadLabels { result: "applied" })
        .inc();
    tracing::info!(
        generation = number,
        trigger = ?trigger,
        restart_needed = ?report.restart_needed,
        "config reloaded"
    );
    report
}

/// Record a refused reload: the generation in force stays.
fn finish<S>(core: &Core, cur: &Generation<S>, report: ReloadReport) -> ReloadReport {
    core.metrics
        .reloads
        .get_or_create(&ReloadLabels { result: "invalid" })
        .inc();
    tracing::error!(
        generation = cur.number,
        trigger = ?report.trigger,
        key = report.key.as_deref().unwrap_or("-"),
        error = report.error.as_deref().unwrap_or("-"),
        "config reload refused; still serving the generation in force"
    );
    core.admin_view(cur, Some(report.clone()));
    report
}

/// After the last client request: let the replay worker go on until the
/// spool is empty or `deadline` (the end of the grace period) passes, and
/// say how it ended. Entries left stay in the store for the next start.
async fn drain_before_exit(spool: &crate::spool::Spool, deadline: tokio::time::Instant) {
    let depth = || spool.store().totals.entries.load(Ordering::Relaxed);
    let at_start = depth();
    if at_start == 0 {
        return;
    }
    tracing::info!(
        waiting = at_start,
        within_ms = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .as_millis() as u64,
        "spool: delivering what waits before exit"
    );
    loop {
        let now = depth();
        if now == 0 {
            tracing::info!(
                delivered = at_start,
                remaining = 0,
                "spool drained before exit"
            );
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                delivered = at_start.saturating_sub(now),
                remaining = now,
                path = %spool.store().path().display(),
                "spool: the grace period is over with entries waiting; they stay in the store and are delivered after the next start from this path (keep it on a volume that outlives the pod)"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// With the shared store every acknowledged write is already in it; give
/// back what this replica had claimed, so the others take it at once
/// rather than when the lease runs out, and say how the queue stands.
async fn hand_off(shared: &crate::spool::store::pg::PgStore) {
    let released = shared.release_all().await;
    let waiting = shared.stats().await.map(|s| s.depth);
    match (released, waiting) {
        (Ok(released), Ok(waiting)) => tracing::info!(
            handed_over = released,
            waiting_in_shared_store = waiting,
            held_only_locally = 0,
            "spool hand-off: every acknowledged write is in the shared store"
        ),
        (r, w) => tracing::warn!(
            error = %r.err().or(w.err()).map_or_else(String::new, |e| e.to_string()),
            held_only_locally = 0,
            "spool hand-off: the shared store could not be reached; this replica's claims are released when their lease runs out"
        ),
    }
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
        let depth = admin
            .spool
            .get()
            .map_or(0, |s| s.store().totals.entries.load(Ordering::Relaxed));
        board.sample(depth);
    }
}
