//! Shared test support: a scriptable fake upstream, a test client, and ways
//! to run the real sidecar (in process, or as the built binary).
#![allow(dead_code, unused_imports)] // each test binary uses a different part of it

pub mod backend;
pub mod client;
pub mod postgres;
pub mod proxy;
pub mod upstream;

pub use client::{Answer, TestBody};
pub use proxy::{Process, Sidecar};
pub use upstream::{FakeUpstream, Recorded, Reply};
