//! The failure policy: timeouts, retries, the shared retry budget, the
//! circuit breaker, and which outcomes count as transient.
//!
//! Separate because the timeout and retry checks are shared: the global
//! `[timeouts]` and `[retry]` sections and every route's overrides go
//! through the same functions, with the key prefix the error names.

use std::time::Duration;

use super::super::ConfigError;
use super::super::schema::{BreakerFile, FileConfig, RetryFile};
use super::nonzero;
use crate::breaker::BreakerParams;
use crate::classify::ClassifyParams;
use crate::retry::{Backoff, BudgetParams, RetryParams};

/// `[classify]`: the statuses, GraphQL codes and item messages that mark
/// an outcome transient or permanent.
pub(super) fn classify(file: &FileConfig) -> Result<ClassifyParams, ConfigError> {
    let c = &file.classify;
    for (i, s) in c.transient_statuses.iter().enumerate() {
        if !(100..=599).contains(s) {
            return Err(ConfigError::key(
                format!("classify.transient_statuses[{i}]"),
                format!("{s} is not an HTTP status"),
            ));
        }
    }
    Ok(ClassifyParams {
        transient_statuses: c.transient_statuses.clone(),
        transient_graphql_codes: c.transient_graphql_codes.clone(),
        permanent_item_messages: c
            .permanent_item_messages
            .iter()
            .map(|m| m.to_lowercase())
            .collect(),
        max_graphql_response: c.max_graphql_response.as_u64(),
    })
}

/// Timeouts shared by the global section and route overrides.
pub(super) fn timeouts(
    prefix: &str,
    per_try: Duration,
    deadline: Duration,
) -> Result<(), ConfigError> {
    nonzero(per_try, &format!("{prefix}.per_try"))?;
    nonzero(deadline, &format!("{prefix}.deadline"))?;
    if per_try > deadline {
        return Err(ConfigError::key(
            format!("{prefix}.per_try"),
            format!(
                "{} is longer than {prefix}.deadline ({})",
                humantime::format_duration(per_try),
                humantime::format_duration(deadline)
            ),
        ));
    }
    Ok(())
}

/// A route's retry policy (the global section with its overrides).
pub(super) fn retry(prefix: &str, r: &RetryFile) -> Result<RetryParams, ConfigError> {
    if r.max_attempts == 0 || r.max_attempts > 16 {
        return Err(ConfigError::key(
            format!("{prefix}.max_attempts"),
            "must be 1..=16 (1 disables retries)",
        ));
    }
    nonzero(r.backoff_base, &format!("{prefix}.backoff_base"))?;
    if r.backoff_max < r.backoff_base {
        return Err(ConfigError::key(
            format!("{prefix}.backoff_max"),
            "must be at least backoff_base",
        ));
    }
    if !(0.0..=1.0).contains(&r.jitter) {
        return Err(ConfigError::key(
            format!("{prefix}.jitter"),
            "must be 0.0..=1.0",
        ));
    }
    let backoff = Backoff::try_new(r.backoff_base, r.backoff_max, r.jitter)
        .map_err(|e| ConfigError::key(format!("{prefix}.backoff_base"), e.to_string()))?;
    Ok(RetryParams {
        max_attempts: r.max_attempts,
        backoff,
        max_replay_body: r.max_replay_body.as_u64(),
        retry_after_max: r.retry_after_max,
        min_attempt_time: r.min_attempt_time,
    })
}

/// The shared budget (global `[retry]` only).
pub(super) fn budget(r: &RetryFile) -> Result<BudgetParams, ConfigError> {
    if !(0.0..=10.0).contains(&r.budget_ratio) || r.budget_ratio.is_nan() {
        return Err(ConfigError::key("retry.budget_ratio", "must be 0.0..=10.0"));
    }
    if r.budget_window < Duration::from_secs(1) || r.budget_window > Duration::from_secs(60) {
        return Err(ConfigError::key("retry.budget_window", "must be 1s..=60s"));
    }
    if r.budget_min_per_sec >= i32::MAX as u32 {
        return Err(ConfigError::key("retry.budget_min_per_sec", "is too large"));
    }
    Ok(BudgetParams {
        window: r.budget_window,
        min_per_sec: r.budget_min_per_sec,
        ratio: r.budget_ratio,
    })
}

/// `[breaker]`: when the circuit opens, for how long, and how it probes.
pub(super) fn breaker(b: &BreakerFile) -> Result<BreakerParams, ConfigError> {
    if !(b.failure_rate > 0.0 && b.failure_rate <= 1.0) {
        return Err(ConfigError::key(
            "breaker.failure_rate",
            "must be in (0.0, 1.0]",
        ));
    }
    if b.window < Duration::from_millis(100) {
        return Err(ConfigError::key("breaker.window", "must be at least 100ms"));
    }
    if b.min_calls == 0 {
        return Err(ConfigError::key("breaker.min_calls", "must be at least 1"));
    }
    nonzero(b.open_for, "breaker.open_for")?;
    if b.max_open_for < b.open_for {
        return Err(ConfigError::key(
            "breaker.max_open_for",
            "must be at least breaker.open_for",
        ));
    }
    if b.probes == 0 {
        return Err(ConfigError::key("breaker.probes", "must be at least 1"));
    }
    Ok(BreakerParams {
        enabled: b.enabled,
        window: b.window,
        min_calls: b.min_calls,
        failure_rate: b.failure_rate,
        consecutive_failures: b.consecutive_failures,
        open_for: b.open_for,
        max_open_for: b.max_open_for,
        probes: b.probes,
    })
}
