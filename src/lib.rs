//! datalayer-sidecar: a local reverse proxy that makes a chat app's
//! data-layer traffic reliable.
//!
//! The app (a Chainlit app persisting steps through the LiteralAI SDK) points
//! its API base URL at the sidecar; the sidecar forwards every request to the
//! one configured backend through a tower stack that times out, classifies,
//! retries with backoff under a budget, breaks the circuit, and — for
//! idempotent step writes — stores and forwards durably.
//!
//! Module map:
//! - [`config`]: TOML + environment + flags → validated [`config::Config`].
//! - [`route`]: the route table and each route's policy.
//! - [`graphql`]: which operation a GraphQL request runs.
//! - [`stack`]: the one place where the layers are ordered.
//! - [`edge`]: per-request record, structured errors, access log, metrics.
//! - [`proxy`]: listener, request rewrite, upstream client.
//! - [`classify`]: one [`classify::Class`] for every outcome.
//! - [`timeout`], [`slot`], [`retry`], [`breaker`]: the reliability layers.
//! - [`respond`]: errors → structured responses.
//! - [`spool`]: durable store-and-forward of idempotent writes.
//! - [`metrics`], [`admin`]: Prometheus metrics and the admin listener.
//! - [`sidecar`]: wiring and the run loop; [`cli`]: the command line.
//! - [`alloc`]: the global allocator the binaries install.
//! - [`clock`]: time arithmetic that cannot overflow.

// Unsafe code only where a trait demands it: `alloc` (the global allocator).
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod admin;
pub mod alloc;
pub mod board;
pub mod body;
pub mod breaker;
pub mod classify;
pub mod cli;
pub mod clock;
pub mod config;
pub mod edge;
pub mod error;
pub mod exchange;
pub mod failure;
pub mod generation;
pub mod graphql;
pub mod metrics;
pub mod pacing;
pub mod proxy;
pub mod respond;
pub mod retry;
pub mod route;
pub mod shutdown;
pub mod sidecar;
pub mod slot;
pub mod spool;
pub mod stack;
pub mod telemetry;
pub mod timeout;

pub use error::Error;

/// Result with the stack's boxed error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
