//! Circuit breaker for the one upstream.
//!
//! States are named by their effect on traffic: `Shut` (closed: everything
//! flows), `Open` (nothing flows, requests fail fast with `circuit_open` or
//! are spooled), `Probing` (half-open: a few probe requests flow; all must
//! succeed to shut it again, one transient failure reopens it).
//!
//! It trips on a failure rate over a sliding window (once the window holds
//! `min_calls`) or on `consecutive_failures` transient failures in a row. Only
//! transient failures count; a backend's 4xx means the backend is up and
//! counts as a success. The open time is `open_for`, or the upstream's
//! `Retry-After` when that is longer, capped at `max_open_for`.
//!
//! Why not `tower-resilience-circuitbreaker`: it classifies outcomes with its
//! own predicate over `Result<Response, Error>`, so it would re-judge what
//! [`crate::classify`] already decided (GraphQL bodies included), and it
//! cannot take a `Retry-After` into the open time or let the spool's replay
//! worker act as the probe traffic. The state machine below is small, driven
//! by our [`Class`], and updated inline: the fast path (shut) reads one
//! atomic, and recording an outcome takes an uncontended lock, cheaper than
//! sending every outcome to a task through a channel.

pub mod gate;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::failure::Class;

pub use gate::{BreakerGate, BreakerGateLayer};

/// Buckets in the sliding window.
const BUCKETS: usize = 10;
/// What a request refused while probing is told to wait.
const PROBING_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The breaker's state, named by its effect on traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Closed: all requests flow.
    Shut = 0,
    /// Half-open: a few probe requests flow.
    Probing = 1,
    /// Open: requests fail fast.
    Open = 2,
}

impl State {
    /// Stable label (`closed`, `half_open`, `open`) for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Shut => "closed",
            State::Probing => "half_open",
            State::Open => "open",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Probing,
            2 => State::Open,
            _ => State::Shut,
        }
    }
}

/// Whether a request may go to the upstream now.
#[derive(Debug)]
pub enum Admission {
    /// Go ahead.
    Allowed,
    /// Go ahead as one of the probes; hold the permit until the outcome is
    /// recorded.
    Probe(ProbePermit),
    /// Do not: the breaker is open for about this long.
    Rejected(Duration),
}

/// The breaker's settings, checked by the config (`[breaker]`).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerParams {
    /// Whether the breaker is on at all.
    pub enabled: bool,
    /// Sliding window over which the failure rate is computed.
    pub window: Duration,
    /// Calls in the window before the failure rate can trip the breaker.
    pub min_calls: u32,
    /// Failure rate (0..=1] in the window that trips the breaker.
    pub failure_rate: f64,
    /// Consecutive transient failures that trip the breaker (0 = off).
    pub consecutive_failures: u32,
    /// How long the breaker stays open before letting probes through.
    pub open_for: Duration,
    /// Longest open time, also the cap on an upstream's `Retry-After`.
    pub max_open_for: Duration,
    /// Requests let through at once while probing.
    pub probes: u32,
}

pub use crate::metrics::BreakerMetrics;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    slot: Option<u64>,
    calls: u32,
    failures: u32,
}

#[derive(Debug)]
struct Machine {
    epoch: Instant,
    state: State,
    buckets: [Bucket; BUCKETS],
    consecutive: u32,
    open_until: Instant,
    probes_in_flight: u32,
    probe_successes: u32,
    last_reason: &'static str,
    /// When the current state began, ms since the Unix epoch.
    since_ms: i64,
}

/// Tells whoever waits for the backend (the replay worker in its backoff)
/// that an attempt just showed it up.
#[derive(Debug, Default)]
struct Recovery {
    /// Set while someone waits: an answered attempt costs one relaxed load
    /// otherwise.
    waiting: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

#[derive(Debug)]
struct Shared {
    cfg: BreakerParams,
    recovery: Recovery,
    bucket_len: Duration,
    state: AtomicU8,
    machine: Mutex<Machine>,
    metrics: BreakerMetrics,
}

/// A cheap handle to the shared breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    shared: Arc<Shared>,
}

/// A snapshot for the admin endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// `closed`, `half_open` or `open`.
    pub state: &'static str,
    /// Whether the breaker is enabled at all.
    pub enabled: bool,
    /// Calls in the sliding window.
    pub window_calls: u32,
    /// Transient failures in the sliding window.
    pub window_failures: u32,
    /// Current run of consecutive transient failures.
    pub consecutive_failures: u32,
    /// Milliseconds until probes are let through (when open).
    pub open_remaining_ms: u64,
    /// Probe requests in flight (when half-open).
    pub probes_in_flight: u32,
    /// Successful probes so far (when half-open).
    pub probe_successes: u32,
    /// Why the breaker last opened.
    pub last_trip_reason: &'static str,
    /// When the current state began, ms since the Unix epoch (the start of
    /// this breaker's settings, if it never changed state).
    pub since_ms: i64,
}

impl Breaker {
    /// A shut breaker with these settings.
    pub fn new(cfg: BreakerParams, metrics: BreakerMetrics) -> Self {
        metrics.state.set(State::Shut as i64);
        let bucket_len = (cfg.window / BUCKETS as u32).max(Duration::from_millis(1));
        let now = Instant::now();
        Breaker {
            shared: Arc::new(Shared {
                recovery: Recovery::default(),
                cfg,
                bucket_len,
                state: AtomicU8::new(State::Shut as u8),
                machine: Mutex::new(Machine {
                    epoch: now,
                    state: State::Shut,
                    buckets: [Bucket::default(); BUCKETS],
                    consecutive: 0,
                    open_until: now,
                    probes_in_flight: 0,
                    probe_successes: 0,
                    last_reason: "",
                    since_ms: crate::clock::now_ms(),
                }),
                metrics,
            }),
        }
    }

    /// The current state (one atomic load).
    pub fn state(&self) -> State {
        State::from_u8(self.shared.state.load(Ordering::Acquire))
    }

    /// The settings it was built with.
    pub fn params(&self) -> &BreakerParams {
        &self.shared.cfg
    }

    /// Whether the breaker is on.
    pub fn enabled(&self) -> bool {
        self.shared.cfg.enabled
    }

    /// Ask to send a request now.
    pub fn admit(&self) -> Admission {
        if !self.shared.cfg.enabled || self.state() == State::Shut {
            return Admission::Allowed;
        }
        let Ok(mut m) = self.shared.machine.lock() else {
            return Admission::Allowed;
        };
        let now = Instant::now();
        if m.state == State::Open {
            if now < m.open_until {
                self.shared.metrics.rejected.inc();
                return Admission::Rejected(m.open_until - now);
            }
            self.transition(&mut m, State::Probing, "open time elapsed");
        }
        match m.state {
            State::Shut => Admission::Allowed,
            State::Probing if m.probes_in_flight < self.shared.cfg.probes => {
                m.probes_in_flight += 1;
                Admission::Probe(ProbePermit {
                    breaker: Some(self.clone()),
                })
            }
            _ => {
                self.shared.metrics.rejected.inc();
                Admission::Rejected(PROBING_RETRY_AFTER)
            }
        }
    }

    /// Record the outcome of one attempt that reached the network.
    pub fn record(&self, class: &Class) {
        let failure = class.is_transient();
        let recovery = &self.shared.recovery;
        if !failure && recovery.waiting.load(Ordering::Relaxed) {
            recovery.waiting.store(false, Ordering::Relaxed);
            recovery.notify.notify_waiters();
        }
        if !self.shared.cfg.enabled {
            return;
        }
        let Ok(mut m) = self.shared.machine.lock() else {
            return;
        };
        let now = Instant::now();
        match m.state {
            State::Shut => {
                let b = self.bucket(&mut m, now);
                b.calls += 1;
                if failure {
                    b.failures += 1;
                    m.consecutive += 1;
                } else {
                    m.consecutive = 0;
                }
                if !failure {
                    return;
                }
                let cfg = &self.shared.cfg;
                let (calls, failures) = window_totals(&m, now, self.shared.bucket_len);
                let by_count =
                    cfg.consecutive_failures > 0 && m.consecutive >= cfg.consecutive_failures;
                let by_rate = calls >= cfg.min_calls
                    && f64::from(failures) / f64::from(calls) >= cfg.failure_rate;
                if by_count || by_rate {
                    let reason = if by_count {
                        "consecutive failures"
                    } else {
                        "failure rate"
                    };
                    self.open(&mut m, now, class.retry_after, reason);
                }
            }
            State::Probing => {
                if failure {
                    self.open(&mut m, now, class.retry_after, "probe failed");
                } else {
                    m.probe_successes += 1;
                    if m.probe_successes >= self.shared.cfg.probes {
                        self.transition(&mut m, State::Shut, "probes succeeded");
                    }
                }
            }
            // Outcomes of requests sent before the breaker opened.
            State::Open => {}
        }
    }

    /// While the breaker is open or probing, how many requests it lets
    /// through at once (its probes); `None` while closed or off. Callers
    /// that start work per request (the replay worker) start no more than
    /// this: the breaker would turn the rest away.
    pub fn probe_limit(&self) -> Option<usize> {
        (self.shared.cfg.enabled && self.state() != State::Shut)
            .then(|| self.shared.cfg.probes.max(1) as usize)
    }

    /// Resolves when an attempt next shows the backend up (answered, not
    /// failed transiently), breaker on or off: the replay worker's backoff
    /// ends there, not at its own timer, once live traffic gets through.
    pub async fn backend_answers(&self) {
        let recovery = &self.shared.recovery;
        let notified = recovery.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        recovery.waiting.store(true, Ordering::Relaxed);
        notified.await;
    }

    /// Time until an open breaker lets probes through.
    pub fn retry_after(&self) -> Option<Duration> {
        if self.state() != State::Open {
            return None;
        }
        let m = self.shared.machine.lock().ok()?;
        Some(m.open_until.saturating_duration_since(Instant::now()))
    }

    /// The state and counters, for the admin endpoint.
    pub fn snapshot(&self) -> Snapshot {
        let enabled = self.shared.cfg.enabled;
        let Ok(m) = self.shared.machine.lock() else {
            return Snapshot {
                state: self.state().as_str(),
                enabled,
                window_calls: 0,
                window_failures: 0,
                consecutive_failures: 0,
                open_remaining_ms: 0,
                probes_in_flight: 0,
                probe_successes: 0,
                last_trip_reason: "",
                since_ms: 0,
            };
        };
        let now = Instant::now();
        let (calls, failures) = window_totals(&m, now, self.shared.bucket_len);
        Snapshot {
            state: m.state.as_str(),
            enabled,
            window_calls: calls,
            window_failures: failures,
            consecutive_failures: m.consecutive,
            open_remaining_ms: if m.state == State::Open {
                m.open_until.saturating_duration_since(now).as_millis() as u64
            } else {
                0
            },
            probes_in_flight: m.probes_in_flight,
            probe_successes: m.probe_successes,
            last_trip_reason: m.last_reason,
            since_ms: m.since_ms,
        }
    }

    fn bucket<'m>(&self, m: &'m mut Machine, now: Instant) -> &'m mut Bucket {
        let slot = slot_of(m.epoch, now, self.shared.bucket_len);
        let b = &mut m.buckets[(slot % BUCKETS as u64) as usize];
        if b.slot != Some(slot) {
            *b = Bucket {
                slot: Some(slot),
                calls: 0,
                failures: 0,
            };
        }
        b
    }

    fn open(
        &self,
        m: &mut Machine,
        now: Instant,
        retry_after: Option<Duration>,
        reason: &'static str,
    ) {
        let cfg = &self.shared.cfg;
        let wait = retry_after
            .map_or(cfg.open_for, |ra| ra.max(cfg.open_for))
            .min(cfg.max_open_for);
        m.open_until = crate::clock::after(now, wait);
        m.last_reason = reason;
        self.transition(m, State::Open, reason);
    }

    fn transition(&self, m: &mut Machine, to: State, reason: &'static str) {
        let from = m.state;
        if from == to {
            return;
        }
        m.state = to;
        m.since_ms = crate::clock::now_ms();
        m.probes_in_flight = 0;
        m.probe_successes = 0;
        if to == State::Shut {
            m.consecutive = 0;
            m.buckets = [Bucket::default(); BUCKETS];
        }
        self.shared.state.store(to as u8, Ordering::Release);
        let metrics = &self.shared.metrics;
        metrics.state.set(to as i64);
        match to {
            State::Shut => metrics.to_closed.inc(),
            State::Probing => metrics.to_half_open.inc(),
            State::Open => metrics.to_open.inc(),
        };
        let open_ms = if to == State::Open {
            m.open_until
                .saturating_duration_since(Instant::now())
                .as_millis() as u64
        } else {
            0
        };
        tracing::warn!(
            target: "datalayer_sidecar::breaker",
            from = from.as_str(),
            to = to.as_str(),
            reason,
            open_ms,
            "circuit breaker {}",
            to.as_str()
        );
    }

    fn release_probe(&self) {
        if let Ok(mut m) = self.shared.machine.lock() {
            m.probes_in_flight = m.probes_in_flight.saturating_sub(1);
        }
    }
}

/// Which bucket-sized slot since `epoch` an instant falls in.
fn slot_of(epoch: Instant, now: Instant, len: Duration) -> u64 {
    (now.saturating_duration_since(epoch).as_nanos() / len.as_nanos().max(1)) as u64
}

/// Sum of calls and failures in the buckets still inside the window.
fn window_totals(m: &Machine, now: Instant, bucket_len: Duration) -> (u32, u32) {
    let current = slot_of(m.epoch, now, bucket_len);
    m.buckets
        .iter()
        .filter(|b| {
            b.slot
                .is_some_and(|s| s + (BUCKETS as u64) > current && s <= current)
        })
        .fold((0, 0), |(c, f), b| (c + b.calls, f + b.failures))
}

/// Held by a probe request; frees the probe slot when dropped.
#[derive(Debug)]
pub struct ProbePermit {
    breaker: Option<Breaker>,
}

impl Drop for ProbePermit {
    fn drop(&mut self) {
        if let Some(b) = self.breaker.take() {
            b.release_probe();
        }
    }
}

#[cfg(test)]
mod tests;
