//! The status board: the outcome counts (the metrics' own `outcomes`
//! counters, not a copy) sampled every [`SAMPLE_EVERY`], so "the last
//! minute" is the difference between now and the sample a minute old, and
//! the recent structured errors. Kept across config generations.
//!
//! The edge counts through it as it writes the access line; the status
//! page ([`crate::admin::status`]) reads it. Below both, so the request
//! path does not depend on the admin port's code.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use crate::clock::now_ms;

/// How often the board takes a sample.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept: ten minutes.
const SAMPLES: usize = 120;
/// Structured errors kept.
const ERRORS: usize = 20;

/// Finished requests by what the client got: one count each, read by
/// the scrape and sampled by the status board (which keeps none of its
/// own).
#[derive(Debug, Clone, Default)]
pub struct Outcomes {
    /// Answered by the backend.
    pub answered: Counter,
    /// Acknowledged from the spool.
    pub spooled: Counter,
    /// Ended in a failure for the client.
    pub failed: Counter,
}

/// One structured error the sidecar answered (never a header or a body).
#[derive(Debug, Clone)]
pub struct ErrorEntry {
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// The stable error code (`upstream_timeout`, `circuit_open`, ...).
    pub code: &'static str,
    /// The route's name.
    pub route: String,
    /// The status answered.
    pub status: u16,
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    at_ms: i64,
    answered: u64,
    spooled: u64,
    failed: u64,
    depth: u64,
}

/// Samples of the outcome counts and recent errors, kept across config
/// generations.
#[derive(Debug, Default)]
pub struct StatusBoard {
    outcomes: Outcomes,
    errors: Mutex<VecDeque<ErrorEntry>>,
    samples: Mutex<VecDeque<Sample>>,
}

/// The figures of the last minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastMinute {
    /// Requests the upstream answered and the client got.
    pub answered: u64,
    /// Writes acknowledged from the spool.
    pub spooled: u64,
    /// Requests that ended in a failure for the client.
    pub failed: u64,
    /// Seconds the figures cover (less than 60 just after start).
    pub seconds: u64,
}

impl StatusBoard {
    /// A board over the metrics' outcome counters.
    pub fn new(outcomes: Outcomes) -> StatusBoard {
        StatusBoard {
            outcomes,
            ..StatusBoard::default()
        }
    }

    /// Count a request the upstream answered.
    pub fn answered(&self) {
        self.outcomes.answered.inc();
    }

    /// Count a write acknowledged from the spool.
    pub fn spooled(&self) {
        self.outcomes.spooled.inc();
    }

    /// Count a request that failed for the client; `error` when the sidecar
    /// answered it with a structured error.
    pub fn failed(&self, error: Option<ErrorEntry>) {
        self.outcomes.failed.inc();
        if let Some(e) = error
            && let Ok(mut q) = self.errors.lock()
        {
            if q.len() == ERRORS {
                q.pop_front();
            }
            q.push_back(e);
        }
    }

    fn now(&self, depth: u64) -> Sample {
        Sample {
            at_ms: now_ms(),
            answered: self.outcomes.answered.get(),
            spooled: self.outcomes.spooled.get(),
            failed: self.outcomes.failed.get(),
            depth,
        }
    }

    /// Take a sample (the sampler calls this every [`SAMPLE_EVERY`]).
    pub fn sample(&self, depth: u64) {
        let s = self.now(depth);
        if let Ok(mut q) = self.samples.lock() {
            if q.len() == SAMPLES {
                q.pop_front();
            }
            q.push_back(s);
        }
    }

    /// Totals since start: (answered, spooled, failed).
    pub fn totals(&self) -> (u64, u64, u64) {
        let s = self.now(0);
        (s.answered, s.spooled, s.failed)
    }

    /// The last minute's figures (since the oldest sample, if younger).
    pub fn last_minute(&self) -> LastMinute {
        let now = self.now(0);
        let base = self.samples.lock().ok().and_then(|q| {
            q.iter()
                .rev()
                .find(|s| now.at_ms - s.at_ms >= 60_000)
                .or_else(|| q.front())
                .copied()
        });
        let base = base.unwrap_or_default();
        LastMinute {
            answered: now.answered.saturating_sub(base.answered),
            spooled: now.spooled.saturating_sub(base.spooled),
            failed: now.failed.saturating_sub(base.failed),
            seconds: if base.at_ms == 0 {
                0
            } else {
                ((now.at_ms - base.at_ms).max(0) / 1000) as u64
            },
        }
    }

    /// The most recent structured errors, newest first.
    pub fn recent_errors(&self, n: usize) -> Vec<ErrorEntry> {
        self.errors
            .lock()
            .map(|q| q.iter().rev().take(n).cloned().collect())
            .unwrap_or_default()
    }

    /// The sampled depths, then `now` (the depth at this moment).
    pub(crate) fn depths(&self, now: u64) -> Vec<(i64, u64)> {
        let mut v: Vec<(i64, u64)> = self
            .samples
            .lock()
            .map(|q| q.iter().map(|s| (s.at_ms, s.depth)).collect())
            .unwrap_or_default();
        v.push((now_ms(), now));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_minute_counts_only_what_happened_since_the_sample_a_minute_old() {
        let b = StatusBoard::default();
        for _ in 0..5 {
            b.answered();
        }
        b.samples.lock().unwrap().push_back(Sample {
            at_ms: now_ms() - 61_000,
            answered: 3,
            spooled: 0,
            failed: 0,
            depth: 0,
        });
        b.spooled();
        b.failed(None);
        let lm = b.last_minute();
        assert_eq!((lm.answered, lm.spooled, lm.failed), (2, 1, 1));
        assert!(lm.seconds >= 60);
    }

    #[test]
    fn errors_are_bounded_and_newest_first() {
        let b = StatusBoard::default();
        for i in 0..(ERRORS + 5) {
            b.failed(Some(ErrorEntry {
                at_ms: i as i64,
                code: "upstream_timeout",
                route: format!("r{i}"),
                status: 504,
            }));
        }
        let e = b.recent_errors(100);
        assert_eq!(e.len(), ERRORS);
        assert_eq!(e[0].route, format!("r{}", ERRORS + 4));
    }
}
