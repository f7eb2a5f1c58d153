//! Logging setup: `tracing` with JSON lines (default) or human-readable text.
//!
//! Lines are formatted on the calling thread into a shared in-memory buffer;
//! a background thread writes the buffer to stdout every 50 ms (sooner when
//! it passes 256 KiB). So a burst of access lines costs one `write` per batch
//! and no thread wake-up per line — on a sidecar pinned to one core, waking a
//! writer thread for every request costs more than formatting the line.
//! `tracing-appender`'s non-blocking writer was the obvious choice and was
//! measured: it hands each line to its thread through a channel, one wake-up
//! per line under light load. A slow log reader never blocks requests: past
//! 8 MiB waiting, lines are dropped and counted, and the count is logged.
//!
//! Nothing in the sidecar logs header values; credential headers are also
//! marked sensitive in the stack (see [`crate::stack`]).

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogFile, LogFormat};

/// How often the buffer is written out.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Write out early past this many bytes.
const FLUSH_AT: usize = 256 * 1024;
/// Drop lines past this many bytes waiting.
const MAX_PENDING: usize = 8 * 1024 * 1024;

#[derive(Debug, Default)]
struct Shared {
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
    closed: AtomicBool,
    dropped: AtomicU64,
}

/// A `MakeWriter` that appends to the shared buffer.
#[derive(Debug, Clone)]
pub struct BufferedStdout {
    shared: Arc<Shared>,
}

/// One line being written.
#[derive(Debug)]
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let Ok(mut buf) = self.shared.buf.lock() else {
            return Ok(data.len());
        };
        if buf.len() + data.len() > MAX_PENDING {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(data.len());
        }
        buf.extend_from_slice(data);
        if buf.len() >= FLUSH_AT {
            self.shared.wake.notify_one();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedStdout {
    type Writer = LineWriter<'a>;
    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter {
            shared: &self.shared,
        }
    }
}

fn flush_loop(shared: Arc<Shared>) {
    let mut out = Vec::with_capacity(FLUSH_AT);
    loop {
        {
            let Ok(guard) = shared.buf.lock() else { return };
            let (mut guard, _) = shared
                .wake
                .wait_timeout_while(guard, FLUSH_EVERY, |b| {
                    b.len() < FLUSH_AT && !shared.closed.load(Ordering::Relaxed)
                })
                .unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *guard, &mut out);
        }
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            out.extend_from_slice(
                format!("{{\"level\":\"WARN\",\"message\":\"log output too slow; {dropped} lines dropped\",\"target\":\"datalayer_sidecar::telemetry\"}}\n")
                    .as_bytes(),
            );
        }
        if !out.is_empty() {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&out);
            let _ = stdout.flush();
            out.clear();
        }
        if shared.closed.load(Ordering::Relaxed)
            && shared.buf.lock().map(|b| b.is_empty()).unwrap_or(true)
        {
            return;
        }
    }
}

/// Keeps the log writer alive; dropping it writes out what is buffered.
#[derive(Debug)]
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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
    let shared = Arc::new(Shared::default());
    let writer = BufferedStdout {
        shared: shared.clone(),
    };
    let flusher = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || flush_loop(flusher))
        .ok();
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
    LogGuard { shared, thread }
}

/// For unit tests: print everything at debug level to the test's output.
#[cfg(test)]
pub fn trace_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("debug"))
        .with_test_writer()
        .try_init();
}
