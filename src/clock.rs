//! Time arithmetic that cannot overflow, and the wall clock in
//! milliseconds.
//!
//! Durations added to an instant come from outside the sidecar — a
//! backend's `Retry-After`, an operator's config — so `Instant + Duration`,
//! which panics past the end of the clock's range, is not used on them: a
//! wait too long to represent is a wait until the far future, never a
//! panic. A leaf: it imports nothing of the crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Beyond any wait the sidecar could mean: about thirty years.
const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);

/// `t + d`, or the far future when that is past the clock's range.
pub fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).or_else(|| t.checked_add(FAR)).unwrap_or(t)
}

/// `d` in whole milliseconds, saturating.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds since the Unix epoch (0 for a clock set before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

/// `now_ms() + d`, saturating.
pub fn ms_after(d: Duration) -> i64 {
    now_ms().saturating_add(millis(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_past_the_end_of_the_clock_is_the_far_future_not_a_panic() {
        let now = Instant::now();
        let t = after(now, Duration::from_secs(u64::MAX));
        assert!(t > after(now, Duration::from_secs(86_400 * 365)));
        assert_eq!(
            after(now, Duration::from_secs(3)),
            now + Duration::from_secs(3)
        );
        assert_eq!(millis(Duration::from_secs(u64::MAX)), i64::MAX);
        assert!(ms_after(Duration::MAX) == i64::MAX);
    }
}
