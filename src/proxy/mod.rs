//! The data path: the listener, the request rewrite, and the upstream client.

pub mod client;
pub mod forward;
pub mod pool;
pub mod server;
pub mod target;

pub use target::UpstreamTarget;
