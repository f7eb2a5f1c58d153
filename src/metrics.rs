//! Prometheus metrics, with the per-request handles resolved up front.
//!
//! `prometheus-client` keeps labelled series in a map behind a lock; looking
//! one up per request would hash label strings on the hot path. Instead every
//! series a request can touch (per route × status class × verdict) is created
//! once per config generation and handed to the request with its route, so
//! the hot path is an index and an atomic add.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::board::Outcomes;
use crate::failure::NotRetried;
use crate::failure::{Class, Kind, Verdict};
use crate::route::Route;

/// Prefix of every metric name.
const PREFIX: &str = "datalayer_sidecar";
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
const VERDICTS: [Verdict; 3] = [Verdict::Success, Verdict::Transient, Verdict::Permanent];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status_class: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    route: String,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    route: String,
    class: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    route: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Handles for one route.
#[derive(Debug)]
pub struct RouteMetrics {
    name: String,
    requests: [[Counter; 3]; 6],
    latency: [Histogram; 6],
    /// Retries started.
    pub retries: Counter,
    not_retried: [Counter; NotRetried::ALL.len()],
    attempts: Family<AttemptLabels, Counter>,
    /// Handles into `attempts` by (verdict, kind slot), made on first use
    /// so only kinds that happen show up, and looked up without hashing.
    attempt_slots: Box<[std::sync::OnceLock<Counter>]>,
}

impl RouteMetrics {
    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Failed requests not tried again so far, by reason.
    pub fn not_retried_counts(&self) -> impl Iterator<Item = (NotRetried, u64)> + '_ {
        NotRetried::ALL
            .iter()
            .zip(self.not_retried.iter())
            .map(|(r, c)| (*r, c.get()))
    }

    /// Count a finished request.
    pub fn request(&self, status: u16, verdict: Verdict, seconds: f64) {
        let sc = status_class(status);
        let v = VERDICTS.iter().position(|x| *x == verdict).unwrap_or(0);
        self.requests[sc][v].inc();
        self.latency[sc].observe(seconds);
    }

    /// Count one upstream attempt.
    pub fn attempt(&self, class: &Class) {
        let v = VERDICTS
            .iter()
            .position(|x| *x == class.verdict)
            .unwrap_or(0);
        let slot = v * Kind::SLOTS + class.kind.slot();
        let Some(cell) = self.attempt_slots.get(slot) else {
            return;
        };
        cell.get_or_init(|| {
            series(
                &self.attempts,
                &AttemptLabels {
                    route: self.name.clone(),
                    class: class.verdict.as_str(),
                    kind: class.kind.as_str(),
                },
            )
        })
        .inc();
    }

    /// Count a request that failed and was not retried.
    pub fn not_retried(&self, reason: NotRetried) {
        if let Some(i) = NotRetried::ALL.iter().position(|r| *r == reason) {
            self.not_retried[i].inc();
        }
    }
}

/// One series of a family. Returning a clone from a function drops the
/// family's lock guard before the next lookup (a guard kept alive across two
/// lookups in one expression deadlocks the family's lock).
fn series<L, M, C>(family: &Family<L, M, C>, labels: &L) -> M
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    family.get_or_create(labels).clone()
}

fn status_class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

/// Spool metrics handles.
#[derive(Debug, Clone, Default)]
pub struct SpoolMetrics {
    /// Entries waiting for delivery.
    pub depth: Gauge,
    /// Stored bytes waiting for delivery.
    pub bytes: Gauge,
    /// Age of the oldest waiting entry, in seconds.
    pub oldest_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Entries in the dead-letter table.
    pub dead_letters: Gauge,
    /// Writes durably committed.
    pub committed: Counter,
    /// Group commits (transactions) made.
    pub commit_batches: Counter,
    /// Writes refused because the spool was full.
    pub full: Counter,
    /// Replays delivered.
    pub replay_delivered: Counter,
    /// Replays that failed transiently (will be tried again).
    pub replay_transient: Counter,
    /// Replays that failed permanently (dead-lettered).
    pub replay_dead_lettered: Counter,
    /// Writes not stored because an identical one was waiting.
    pub deduplicated: Counter,
    /// Bytes of the store's files on disk (database, log, shared memory).
    pub disk_bytes: Gauge,
    /// Bytes of the store's write-ahead log.
    pub wal_bytes: Gauge,
    /// 1 while the worker is paused because the backend refuses everything.
    pub paused: Gauge,
    /// Pauses, by reason.
    pub pauses: Family<PauseLabels, Counter>,
    /// 1 while the replay worker runs; 0 while it is down and about to be
    /// restarted.
    pub worker_up: Gauge,
    /// Times the replay worker ended without being asked and was started
    /// again.
    pub worker_restarts: Counter,
    /// Upstream requests the replay worker made (one may carry many
    /// entries, see `spool.replay_batch`).
    pub replay_requests: Counter,
    /// Reads of the queue's head by the replay worker; on the shared store
    /// each is a claim, a transaction on the database.
    pub queue_reads: Counter,
    /// `spool.max_entries`, for "how full" (alerts divide by it).
    pub capacity_entries: Gauge,
    /// `spool.max_bytes`.
    pub capacity_bytes: Gauge,
}

/// Labels of `spool_pauses`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PauseLabels {
    /// `status_401`, `tls`, `internal`, ...
    pub reason: String,
}

impl SpoolMetrics {
    /// Every spool metric, in exposition order: what the store holds, the
    /// replay worker's state, the configured capacity, then the replays.
    fn register(registry: &mut Registry) -> Self {
        let spool = SpoolMetrics::default();
        spool.register_store(registry);
        spool.register_worker(registry);
        spool.register_capacity(registry);
        spool.register_replays(registry)
    }

    /// What the store holds and how writes got into it (or did not).
    fn register_store(&self, registry: &mut Registry) {
        registry.register(
            "spool_depth",
            "Spooled writes waiting for delivery",
            self.depth.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes of spooled writes waiting for delivery",
            self.bytes.clone(),
        );
        registry.register(
            "spool_oldest_age_seconds",
            "Age of the oldest spooled write waiting for delivery",
            self.oldest_age_seconds.clone(),
        );
        registry.register(
            "spool_dead_letters",
            "Writes in the dead-letter table",
            self.dead_letters.clone(),
        );
        registry.register(
            "spool_committed",
            "Writes durably committed to the spool",
            self.committed.clone(),
        );
        registry.register(
            "spool_commit_batches",
            "Spool transactions (group commits)",
            self.commit_batches.clone(),
        );
        registry.register(
            "spool_full",
            "Writes refused because the spool was full",
            self.full.clone(),
        );
        registry.register(
            "spool_deduplicated",
            "Writes not stored because an identical write was already waiting",
            self.deduplicated.clone(),
        );
        registry.register(
            "spool_disk_bytes",
            "Bytes of the spool store's files on disk (database, write-ahead log, shared memory)",
            self.disk_bytes.clone(),
        );
        registry.register(
            "spool_wal_bytes",
            "Bytes of the spool store's write-ahead log",
            self.wal_bytes.clone(),
        );
    }

    /// Whether the replay worker delivers: paused, up, restarted.
    fn register_worker(&self, registry: &mut Registry) {
        registry.register(
            "spool_paused",
            "1 while the replay worker is paused because the backend refuses every write",
            self.paused.clone(),
        );
        registry.register(
            "spool_pauses",
            "Times the replay worker paused, by reason",
            self.pauses.clone(),
        );
        registry.register(
            "spool_worker_up",
            "1 while the replay worker runs, 0 while it is down and being restarted",
            self.worker_up.clone(),
        );
        registry.register(
            "spool_worker_restarts",
            "Times the replay worker stopped without being asked and was started again",
            self.worker_restarts.clone(),
        );
    }

    /// The configured limits, exported so alerts can divide by them.
    fn register_capacity(&self, registry: &mut Registry) {
        registry.register(
            "spool_capacity_entries",
            "The spool's capacity in entries (spool.max_entries)",
            self.capacity_entries.clone(),
        );
        registry.register(
            "spool_capacity_bytes",
            "The spool's capacity in bytes (spool.max_bytes)",
            self.capacity_bytes.clone(),
        );
    }

    /// The replay worker's traffic and how each replay ended; the outcome
    /// series are resolved now so counting one is an atomic add.
    fn register_replays(self, registry: &mut Registry) -> Self {
        registry.register(
            "spool_replay_requests",
            "Upstream requests made by the replay worker (one carries up to spool.replay_batch entries)",
            self.replay_requests.clone(),
        );
        registry.register(
            "spool_queue_reads",
            "Reads of the queue's head by the replay worker (on the postgres backend, claims)",
            self.queue_reads.clone(),
        );
        let replays = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "spool_replays",
            "Replays of spooled writes, by outcome",
            replays.clone(),
        );
        let outcome = |outcome| series(&replays, &OutcomeLabels { outcome });
        SpoolMetrics {
            replay_delivered: outcome("delivered"),
            replay_transient: outcome("transient_failure"),
            replay_dead_lettered: outcome("dead_lettered"),
            ..self
        }
    }
}

/// The per-route metric families; a route's series are made from them.
#[derive(Debug)]
struct RouteFamilies {
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    attempts: Family<AttemptLabels, Counter>,
    retries: Family<RouteLabel, Counter>,
    not_retried: Family<ReasonLabels, Counter>,
}

impl RouteFamilies {
    /// The families a request's outcome is counted into: answers, their
    /// latency, the upstream attempts behind them and the retry decisions.
    fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route, status class and final class",
            requests.clone(),
        );
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "request_duration_seconds",
            "Time from request head to the end of the response, by route and status class",
            latency.clone(),
        );
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "upstream_attempts",
            "Attempts sent to the upstream, by route, class and kind",
            attempts.clone(),
        );
        let retries = Family::<RouteLabel, Counter>::default();
        registry.register("retries", "Retries started, by route", retries.clone());
        let not_retried = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "not_retried",
            "Failed requests not tried again, by route and reason",
            not_retried.clone(),
        );
        RouteFamilies {
            requests,
            latency,
            attempts,
            retries,
            not_retried,
        }
    }
}

/// Every metric the sidecar exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    families: RouteFamilies,
    /// Breaker state and transitions.
    pub breaker: BreakerMetrics,
    /// Retries available in the budget (set at scrape time).
    pub budget_balance: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Client connections open now.
    pub connections_active: Gauge,
    /// Client connections accepted.
    pub connections_total: Counter,
    /// Finished requests by what the client got (the status board's
    /// figures).
    pub outcomes: Outcomes,
    /// Spool state and activity.
    pub spool: SpoolMetrics,
    /// Config reloads, by result (`applied`, `invalid`).
    pub reloads: Family<ReloadLabels, Counter>,
    /// The config generation in force (1 at start, +1 per applied reload).
    pub generation: Gauge,
}

/// `outcomes`, by outcome.
fn register_outcomes(registry: &mut Registry) -> Outcomes {
    let family = Family::<OutcomeLabels, Counter>::default();
    registry.register(
        "outcomes",
        "Finished client requests by what the client got: answered by the backend, acknowledged from the spool, or failed",
        family.clone(),
    );
    let outcome = |outcome| series(&family, &OutcomeLabels { outcome });
    Outcomes {
        answered: outcome("answered"),
        spooled: outcome("spooled"),
        failed: outcome("failed"),
    }
}

/// Labels of `reloads`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `applied` or `invalid`.
    pub result: &'static str,
}

/// The breaker's state, its transitions (one series per state entered,
/// resolved now so a transition is an atomic add) and its refusals.
fn register_breaker(registry: &mut Registry) -> BreakerMetrics {
    let breaker = BreakerMetrics::default();
    registry.register(
        "breaker_state",
        "Circuit breaker state: 0 closed, 1 half-open, 2 open",
        breaker.state.clone(),
    );
    let transitions = Family::<TransitionLabels, Counter>::default();
    registry.register(
        "breaker_transitions",
        "Circuit breaker transitions, by the state entered",
        transitions.clone(),
    );
    let breaker = BreakerMetrics {
        to_closed: series(&transitions, &TransitionLabels { to: "closed" }),
        to_half_open: series(&transitions, &TransitionLabels { to: "half_open" }),
        to_open: series(&transitions, &TransitionLabels { to: "open" }),
        ..breaker
    };
    registry.register(
        "breaker_rejected",
        "Requests refused because the breaker was open",
        breaker.rejected.clone(),
    );
    breaker
}

/// The shared retry budget's balance; the admin port sets it at scrape
/// time, as the budget itself is rebuilt with each generation.
fn register_retry_budget(registry: &mut Registry) -> Gauge<f64, std::sync::atomic::AtomicU64> {
    let budget_balance = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    registry.register(
        "retry_budget_balance",
        "Retries the shared budget allows right now",
        budget_balance.clone(),
    );
    budget_balance
}

/// The edge's client connections: open now, and accepted so far.
fn register_connections(registry: &mut Registry) -> (Gauge, Counter) {
    let active = Gauge::default();
    registry.register(
        "connections_active",
        "Client connections open now",
        active.clone(),
    );
    let total = Counter::default();
    registry.register("connections", "Client connections accepted", total.clone());
    (active, total)
}

/// The process's configuration: reloads by result (both results exported
/// from the start, so an alert on `invalid` has a series to watch) and the
/// generation in force.
fn register_config(registry: &mut Registry) -> (Family<ReloadLabels, Counter>, Gauge) {
    let reloads = Family::<ReloadLabels, Counter>::default();
    registry.register(
        "reloads",
        "Config reloads (SIGHUP or POST /reload), by result",
        reloads.clone(),
    );
    for result in ["applied", "invalid"] {
        let _ = reloads.get_or_create(&ReloadLabels { result });
    }
    let generation = Gauge::default();
    registry.register(
        "config_generation",
        "The config generation in force",
        generation.clone(),
    );
    (reloads, generation)
}

impl Metrics {
    /// Register every metric; a route's series are made from the families
    /// by [`Metrics::route_table`].
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix(PREFIX);
        // The exposition lists metrics in the order they are registered.
        let families = RouteFamilies::register(&mut registry);
        let breaker = register_breaker(&mut registry);
        let budget_balance = register_retry_budget(&mut registry);
        let (connections_active, connections_total) = register_connections(&mut registry);
        let outcomes = register_outcomes(&mut registry);
        let spool = SpoolMetrics::register(&mut registry);
        let (reloads, generation) = register_config(&mut registry);
        Arc::new(Metrics {
            reloads,
            generation,
            registry,
            families,
            breaker,
            budget_balance,
            connections_active,
            connections_total,
            outcomes,
            spool,
        })
    }

    /// Handles for each route of a table, in its order. A route keeps its
    /// series across reloads (they are found by its name), so a reload
    /// never resets a counter.
    pub fn route_table(&self, routes: &[Arc<Route>]) -> Arc<[Arc<RouteMetrics>]> {
        let RouteFamilies {
            requests,
            latency,
            attempts,
            retries,
            not_retried,
        } = &self.families;
        routes
            .iter()
            .map(|r| {
                let name = r.name.to_string();
                Arc::new(RouteMetrics {
                    requests: std::array::from_fn(|sc| {
                        std::array::from_fn(|v| {
                            series(
                                requests,
                                &RequestLabels {
                                    route: name.clone(),
                                    status_class: STATUS_CLASSES[sc],
                                    class: VERDICTS[v].as_str(),
                                },
                            )
                        })
                    }),
                    latency: std::array::from_fn(|sc| {
                        series(
                            latency,
                            &LatencyLabels {
                                route: name.clone(),
                                status_class: STATUS_CLASSES[sc],
                            },
                        )
                    }),
                    retries: series(
                        retries,
                        &RouteLabel {
                            route: name.clone(),
                        },
                    ),
                    not_retried: std::array::from_fn(|i| {
                        series(
                            not_retried,
                            &ReasonLabels {
                                route: name.clone(),
                                reason: NotRetried::ALL[i].as_str(),
                            },
                        )
                    }),
                    attempts: attempts.clone(),
                    attempt_slots: (0..VERDICTS.len() * Kind::SLOTS)
                        .map(|_| std::sync::OnceLock::new())
                        .collect(),
                    name,
                })
            })
            .collect()
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Breaker metrics handles.
#[derive(Debug, Clone, Default)]
pub struct BreakerMetrics {
    /// 0 closed, 1 half-open, 2 open.
    pub state: Gauge,
    /// Transitions into closed.
    pub to_closed: Counter,
    /// Transitions into half-open.
    pub to_half_open: Counter,
    /// Transitions into open.
    pub to_open: Counter,
    /// Requests refused because the breaker was open.
    pub rejected: Counter,
}
