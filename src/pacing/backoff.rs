//! Exponential backoff with jitter: the n-th retry waits a random time up to
//! `min(max, base × 2^(n-1))` ("full jitter" when `jitter = 1.0`), so clients
//! that failed together do not retry together.

use std::time::Duration;

/// Backoff settings, checked by [`Backoff::try_new`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: f64,
}

/// Why backoff settings were refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid backoff: {0}")]
pub struct InvalidBackoff(pub &'static str);

impl Backoff {
    /// Check and build.
    pub fn try_new(base: Duration, max: Duration, jitter: f64) -> Result<Self, InvalidBackoff> {
        if base.is_zero() {
            return Err(InvalidBackoff("base must be greater than zero"));
        }
        if max < base {
            return Err(InvalidBackoff("max must be at least base"));
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(InvalidBackoff("jitter must be within 0.0..=1.0"));
        }
        Ok(Backoff { base, max, jitter })
    }

    /// The first ceiling.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The largest ceiling.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The random fraction of the ceiling.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The ceiling for retry number `n` (1 for the first retry).
    pub fn ceiling(&self, n: u32) -> Duration {
        let shift = n.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << shift).min(self.max)
    }

    /// The wait before retry number `n`.
    pub fn delay(&self, n: u32) -> Duration {
        let ceiling = self.ceiling(n);
        if self.jitter == 0.0 {
            return ceiling;
        }
        let fraction = (1.0 - self.jitter) + self.jitter * fastrand::f64();
        ceiling.mul_f64(fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max() {
        let b =
            Backoff::try_new(Duration::from_millis(50), Duration::from_millis(300), 0.0).unwrap();
        let d: Vec<_> = (1..=5).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(d, [50, 100, 200, 300, 300]);
    }

    #[test]
    fn full_jitter_stays_under_ceiling() {
        let b = Backoff::try_new(Duration::from_millis(100), Duration::from_secs(1), 1.0).unwrap();
        for n in 1..6 {
            for _ in 0..100 {
                assert!(b.delay(n) <= b.ceiling(n));
            }
        }
        assert!(Backoff::try_new(Duration::ZERO, Duration::from_secs(1), 1.0).is_err());
        assert!(Backoff::try_new(Duration::from_secs(2), Duration::from_secs(1), 1.0).is_err());
    }
}
