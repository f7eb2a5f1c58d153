//! Retries: tower's [`tower::retry::Retry`] driven by [`RetryPolicy`].
//!
//! A retry happens only when it is safe and useful: the failure is
//! transient; the request certainly did not reach the backend, or the route
//! is idempotent; the body was kept for replay; the breaker is not open; the
//! shared budget allows it; and the next attempt can still finish before the
//! deadline after its backoff (and after any `Retry-After`, which is honoured
//! and never cut short). Every refusal is recorded on the exchange with its
//! reason, so the access line and metrics say why nothing more was tried.
//!
//! A batched write whose answer is partial — some aliases settled, others
//! failed for a reason that may pass — is retried alias by alias
//! ([`partial`]).

pub mod budget;
pub mod partial;
pub mod policy;

pub use crate::pacing::Backoff;
pub use crate::pacing::{BudgetParams, RetryParams};
pub use budget::RetryBudget;
pub use policy::RetryPolicy;

#[cfg(test)]
mod tests;
