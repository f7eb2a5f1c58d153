//! Logging setup: `tracing` with JSON lines (default) or human-readable text.
//!
//! Lines are formatted on the calling thread and written by a background
//! thread through a buffer, so a burst of access lines costs one `write` per
//! batch instead of one per line, and a slow log reader never blocks the
//! proxy (past the queue's bound, lines are dropped rather than stalling
//! requests). Nothing in the sidecar logs header values; credential headers
//! are also marked sensitive in the stack (see [`crate::stack`]).

use std::io::BufWriter;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFile, LogFormat};

/// Keeps the log writer alive; dropping it flushes what is queued.
#[derive(Debug)]
pub struct LogGuard {
    _guard: WorkerGuard,
}

/// Install the global subscriber. `RUST_LOG`, when set, replaces `log.level`.
pub fn init(log: &LogFile) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = if log.access {
        filter
    } else {
        filter.add_directive("access=off".parse().unwrap_or_default())
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .thread_name("log-writer")
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true);
    let result = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging was already initialised: {e}");
    }
    LogGuard { _guard: guard }
}

/// For unit tests: print everything at debug level to the test's output.
#[cfg(test)]
pub fn trace_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("debug"))
        .with_test_writer()
        .try_init();
}
