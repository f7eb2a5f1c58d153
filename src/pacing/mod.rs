//! How soon and how often to try again: the backoff curve and the retry
//! settings a route's policy and the shared budget are built with. Plain
//! data and arithmetic, a leaf: routes, the config and the spool's worker
//! hold these values without depending on the retry layer.
//!
//! The settings are built once per config generation by [`crate::config`], which checks
//! every value on the way: the policy reads them as they are and never
//! re-validates on the request path.

pub mod backoff;

use std::time::Duration;

pub use backoff::Backoff;

/// A route's retry policy: the global `[retry]` section with the route's
/// overrides applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryParams {
    /// Attempts per request, the first included (1..=16).
    pub max_attempts: u32,
    /// The wait before each retry.
    pub backoff: Backoff,
    /// Largest body kept in memory so the request can be sent again.
    pub max_replay_body: u64,
    /// Longest `Retry-After` waited for.
    pub retry_after_max: Duration,
    /// Time that must be left before the deadline once a retry's backoff
    /// is over.
    pub min_attempt_time: Duration,
}

/// The shared retry budget's settings (global only: one budget for every
/// request).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetParams {
    /// How long a request counts toward the budget (1s..=60s).
    pub window: Duration,
    /// Retries per second always allowed.
    pub min_per_sec: u32,
    /// Retries allowed as a fraction of recent requests (0..=10).
    pub ratio: f32,
}
