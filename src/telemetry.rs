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
//! JSON lines are written by [`JsonLines`], a formatter that writes each field
//! straight into the line (numbers with `itoa`-style formatting, strings
//! escaped in place) instead of building a `serde_json` map per event: the
//! access line is written for every request, so its cost is paid per request.
//!
//! Nothing in the sidecar logs header values; credential headers are also
//! marked sensitive in the stack (see [`crate::stack`]).

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

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
        LogFormat::Json => builder.event_format(JsonLines).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging was already initialised: {e}");
    }
    LogGuard { shared, thread }
}

/// One JSON object per event: `timestamp`, `level`, the event's fields
/// (`message` first when there is one), `target`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        write!(
            writer,
            "{{\"timestamp\":\"{}\",\"level\":\"{}\"",
            humantime::format_rfc3339_micros(std::time::SystemTime::now()),
            meta.level()
        )?;
        let mut visitor = JsonFields {
            out: &mut writer,
            result: Ok(()),
        };
        event.record(&mut visitor);
        visitor.result?;
        writer.write_str(",\"target\":")?;
        write_json_str(&mut writer, meta.target())?;
        writer.write_str("}\n")
    }
}

struct JsonFields<'a, 'w> {
    out: &'a mut Writer<'w>,
    result: std::fmt::Result,
}

impl JsonFields<'_, '_> {
    fn key(&mut self, field: &Field) -> std::fmt::Result {
        self.out.write_str(",\"")?;
        self.out.write_str(field.name())?;
        self.out.write_str("\":")
    }
}

impl Visit for JsonFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = self
                .key(field)
                .and_then(|()| write_json_str(self.out, value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| write!(self.out, "{value}"));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| write!(self.out, "{value}"));
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| {
                if value.is_finite() {
                    write!(self.out, "{value}")
                } else {
                    self.out.write_str("null")
                }
            });
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.result.is_ok() {
            self.result = self
                .key(field)
                .and_then(|()| self.out.write_str(if value { "true" } else { "false" }));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| {
                self.out.write_char('"')?;
                write!(Escaper(self.out), "{value:?}")?;
                self.out.write_char('"')
            });
        }
    }
}

/// Writes what it is given with JSON string escaping.
struct Escaper<'a, W: std::fmt::Write>(&'a mut W);

impl<W: std::fmt::Write> std::fmt::Write for Escaper<'_, W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let esc = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[start..i])?;
            if esc.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(esc)?;
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

fn write_json_str(out: &mut impl std::fmt::Write, s: &str) -> std::fmt::Result {
    out.write_char('"')?;
    Escaper(out).write_str(s)?;
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_json() {
        let mut s = String::new();
        write_json_str(&mut s, "a\"b\\c\nd\u{1}é").unwrap();
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn events_are_one_json_object_per_line() {
        use tracing_subscriber::layer::SubscriberExt;
        let shared = Arc::new(Shared::default());
        let writer = BufferedStdout {
            shared: shared.clone(),
        };
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines)
                .with_writer(writer),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "access", status = 200u64, ms = 1.5, ok = true, path = "/a\"b", "done {}", 7);
        });
        let buf = shared.buf.lock().unwrap().clone();
        let line = String::from_utf8(buf).unwrap();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["ms"], 1.5);
        assert_eq!(v["ok"], true);
        assert_eq!(v["path"], "/a\"b");
        assert_eq!(v["message"], "done 7");
        assert_eq!(v["target"], "access");
        assert_eq!(v["level"], "INFO");
    }
}
