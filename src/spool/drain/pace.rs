//! How the worker paces itself between deliveries: the backoff after
//! failures, a wait the backend asked for (capped), the pause after a
//! refusal of everything, and the probes while the breaker is not closed.

use std::collections::HashSet;

use tokio::time::Instant;

use super::{Done, Drain};
use crate::clock;
use crate::metrics::PauseLabels;
use crate::spool::Paused;
use crate::spool::store::Entry;
use crate::spool::store::now_ms;
use std::time::Duration;

/// The worker's state between deliveries.
pub(super) struct Pacing {
    pub(super) backoff: Duration,
    /// No new delivery starts before this instant (deliveries in flight go
    /// on): the backend is struggling, or refusing everything.
    pub(super) until: Option<Instant>,
    /// Set while paused: one probe at a time until one goes through.
    pub(super) paused: Option<Paused>,
    /// Whether `until` is a wait the backend asked for (`Retry-After`),
    /// longer than the worker's own backoff: a live success does not cut
    /// that short.
    pub(super) backend_asked: bool,
    /// Entries whose delivery failed while the breaker was not closed,
    /// since the last delivery that went through: the next probes take
    /// other entries first, so one entry that keeps failing on its own
    /// (slow, too large) cannot keep the breaker from closing.
    pub(super) probed: HashSet<i64>,
}

impl Pacing {
    /// How many of `start` no earlier probe failed with.
    pub(super) fn unprobed(&self, start: &[Entry]) -> usize {
        start
            .iter()
            .filter(|e| !self.probed.contains(&e.id))
            .count()
    }
}

impl Drain {
    /// What one finished delivery does to the pace of the next ones.
    pub(super) fn pace(&self, pacing: &mut Pacing, done: Done) {
        let now = Instant::now();
        match done {
            Done::Lost => {}
            Done::Gone => {
                pacing.backend_asked = false;
                pacing.backoff = self.view().replay.backoff_base;
                pacing.probed.clear();
                if let Some(p) = pacing.paused.take() {
                    tracing::warn!(
                        target: "spool",
                        reason = %p.reason,
                        paused_ms = (now_ms() - p.since_ms).max(0),
                        "spool resumed: the backend takes writes again"
                    );
                    self.spool.set_paused(None);
                }
            }
            Done::Retry(wait) => {
                // A wait the backend asked for (`Retry-After`) is honoured
                // up to replay_backoff_max: past that one entry would stall
                // the whole queue, and a value past the clock's range would
                // stop the worker.
                let wait = wait.min(self.view().replay.backoff_max);
                pacing.backend_asked = wait > pacing.backoff;
                let until = clock::after(now, wait.max(pacing.backoff));
                // Failures of deliveries that ran side by side are one
                // event: back off further once per pause.
                if pacing.until.is_none_or(|t| t <= now) {
                    pacing.backoff = pacing
                        .backoff
                        .saturating_mul(2)
                        .min(self.view().replay.backoff_max);
                }
                pacing.until = Some(pacing.until.map_or(until, |t| t.max(until)));
            }
            Done::Pause { reason, detail } => {
                pacing.backend_asked = false;
                let wait = pacing.backoff;
                pacing.backoff = pacing
                    .backoff
                    .saturating_mul(2)
                    .min(self.view().replay.backoff_max);
                pacing.until = Some(clock::after(now, wait));
                let next_probe_ms = clock::ms_after(wait);
                let paused = match pacing.paused.take() {
                    Some(p) => Paused {
                        next_probe_ms,
                        detail,
                        ..p
                    },
                    None => {
                        tracing::warn!(
                            target: "spool",
                            reason = %reason,
                            detail = %detail,
                            "spool paused: the backend refuses every write; nothing is dead-lettered, probing again"
                        );
                        self.spool
                            .inner
                            .metrics
                            .pauses
                            .get_or_create(&PauseLabels {
                                reason: reason.clone(),
                            })
                            .inc();
                        Paused {
                            reason,
                            detail,
                            since_ms: now_ms(),
                            next_probe_ms,
                        }
                    }
                };
                self.spool.set_paused(Some(paused.clone()));
                pacing.paused = Some(paused);
            }
        }
    }
}
