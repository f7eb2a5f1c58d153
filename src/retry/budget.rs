//! A retry budget shared by every request: retries may be at most
//! `ratio` × the requests seen in the last `window`, plus a reserve of
//! `min_per_sec` per second so a quiet sidecar can still retry.
//!
//! The same idea as tower's `TpsBudget` (and implementing tower's
//! [`Budget`] trait), written here because the operator needs the current
//! balance as a metric and tower's type does not expose it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tower::retry::budget::Budget;

use super::BudgetParams;

/// Slots the window is divided into.
const SLOTS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    index: Option<u64>,
    deposits: u64,
    withdrawals: u64,
}

#[derive(Debug)]
struct Ring {
    epoch: Instant,
    slots: [Slot; SLOTS],
}

/// The shared retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    reserve: f64,
    slot_len: Duration,
    ring: Mutex<Ring>,
}

impl RetryBudget {
    /// A budget with these settings (checked by the config).
    pub fn new(p: &BudgetParams) -> Self {
        let (window, min_per_sec, ratio) = (p.window, p.min_per_sec, p.ratio);
        RetryBudget {
            ratio: f64::from(ratio),
            reserve: f64::from(min_per_sec) * window.as_secs_f64(),
            slot_len: (window / SLOTS as u32).max(Duration::from_millis(1)),
            ring: Mutex::new(Ring {
                epoch: Instant::now(),
                slots: [Slot::default(); SLOTS],
            }),
        }
    }

    fn with_slot<T>(&self, f: impl FnOnce(&mut Slot, f64) -> T) -> Option<T> {
        let mut ring = self.ring.lock().ok()?;
        let now = Instant::now();
        let current = (now.saturating_duration_since(ring.epoch).as_nanos()
            / self.slot_len.as_nanos()) as u64;
        let (mut deposits, mut withdrawals) = (0u64, 0u64);
        for s in &ring.slots {
            if s.index
                .is_some_and(|i| i + SLOTS as u64 > current && i <= current)
            {
                deposits += s.deposits;
                withdrawals += s.withdrawals;
            }
        }
        let balance = self.reserve + self.ratio * deposits as f64 - withdrawals as f64;
        let slot = &mut ring.slots[(current % SLOTS as u64) as usize];
        if slot.index != Some(current) {
            *slot = Slot {
                index: Some(current),
                deposits: 0,
                withdrawals: 0,
            };
        }
        Some(f(slot, balance))
    }

    /// Retries available right now.
    pub fn balance(&self) -> f64 {
        self.with_slot(|_, b| b).unwrap_or(0.0).max(0.0)
    }
}

impl Budget for RetryBudget {
    fn deposit(&self) {
        self.with_slot(|s, _| s.deposits += 1);
    }

    fn withdraw(&self) -> bool {
        self.with_slot(|s, balance| {
            if balance >= 1.0 {
                s.withdrawals += 1;
                true
            } else {
                false
            }
        })
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn ratio_and_reserve_bound_retries() {
        let b = RetryBudget::new(&BudgetParams {
            window: Duration::from_secs(10),
            min_per_sec: 1,
            ratio: 0.2,
        });
        // Reserve: 1/s over 10 s.
        let mut granted = 0;
        for _ in 0..100 {
            b.deposit();
            if b.withdraw() {
                granted += 1;
            }
        }
        // 100 requests × 0.2 + 10 reserve.
        assert_eq!(granted, 30);
        assert!(!b.withdraw());
        // After the window passes the deposits and withdrawals expire.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!((b.balance() - 10.0).abs() < 1e-9);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn zero_ratio_only_reserve() {
        let b = RetryBudget::new(&BudgetParams {
            window: Duration::from_secs(1),
            min_per_sec: 0,
            ratio: 0.0,
        });
        b.deposit();
        assert!(!b.withdraw());
    }
}
