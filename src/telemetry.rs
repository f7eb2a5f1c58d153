//! Logging setup: `tracing` with JSON lines (default) or human-readable text.
//!
//! Lines go into a shared in-memory buffer; a background thread writes the
//! buffer to stdout every 50 ms (sooner when it passes 64 KiB). So a burst of
//! access lines costs one `write` per batch and no thread wake-up per line —
//! on a sidecar pinned to one core, waking a writer thread for every request
//! costs more than formatting the line. (`tracing-appender`'s non-blocking
//! writer was the obvious choice and was measured: it hands each line to its
//! thread through a channel, one wake-up per line under light load.) A slow
//! log reader never blocks requests: past 8 MiB waiting, lines are dropped,
//! counted, and the count is logged.
//!
//! JSON lines are written by [`JsonLayer`], a `tracing` layer that formats
//! each event's fields straight into a reused line buffer — numbers with
//! `itoa`/`ryu`, strings escaped in place, the timestamp's date part cached
//! per second — instead of going through `tracing-subscriber`'s `fmt` layer
//! and `serde_json`. The access line is written for every request; callgrind
//! put the generic path at ~11,800 instructions per line.
//!
//! Nothing in the sidecar logs header values; credential headers are also
//! marked sensitive in the stack (see [`crate::stack`]).

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// How often the buffer is written out.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Write out early past this many bytes. The buffer and the one being
/// written are both resident: on the 32-connection bench (~24k lines/s)
/// peak RSS was 13.3 MiB at 256 KiB and 12.3 MiB at 64 KiB, for ~160
/// writes a second instead of ~40.
const FLUSH_AT: usize = 64 * 1024;
/// Drop lines past this many bytes waiting.
const MAX_PENDING: usize = 8 * 1024 * 1024;

#[derive(Debug, Default)]
struct Shared {
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
    closed: AtomicBool,
    dropped: AtomicU64,
}

impl Shared {
    fn append(&self, line: &[u8]) {
        let Ok(mut buf) = self.buf.lock() else {
            return;
        };
        if buf.len() + line.len() > MAX_PENDING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buf.extend_from_slice(line);
        if buf.len() >= FLUSH_AT {
            self.wake.notify_one();
        }
    }
}

/// A `MakeWriter` that appends to the shared buffer (for the text format).
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
        self.shared.append(data);
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

/// Log line format.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line (for containers and log shippers).
    Json,
    /// Human-readable lines.
    Text,
}

/// The logging settings, checked by the config (`[log]`).
#[derive(Debug, Clone)]
pub struct LogParams {
    /// `json` or `text` (needs a restart to change).
    pub format: LogFormat,
    /// The parsed filter.
    pub level: Targets,
    /// Whether access lines are written.
    pub access: bool,
}

impl PartialEq for LogParams {
    fn eq(&self, other: &Self) -> bool {
        self.format == other.format
            && self.access == other.access
            && self.level.to_string() == other.level.to_string()
    }
}

/// Changes the filter of the installed subscriber (a reload of `[log]`).
type FilterHandle = tracing_subscriber::reload::Handle<Targets, tracing_subscriber::Registry>;

/// The handle of the subscriber [`init`] installed, if it did.
static FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

/// The filter for `log`: `RUST_LOG` when set, else `log.level`; access
/// lines off unless `log.access`.
fn filter_of(log: &LogParams) -> Targets {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| log.level.clone());
    if log.access {
        filter
    } else {
        filter.with_target("access", LevelFilter::OFF)
    }
}

/// Apply a reloaded `log.level` / `log.access` to the running subscriber
/// (the format needs a restart). A no-op when [`init`] did not install it
/// (tests running the sidecar in process).
pub fn apply(log: &LogParams) {
    if let Some(handle) = FILTER.get()
        && let Err(e) = handle.reload(filter_of(log))
    {
        tracing::warn!(error = %e, "cannot apply the new log filter");
    }
}

/// Install the global subscriber. `RUST_LOG`, when set, replaces `log.level`.
///
/// Filters are `target=level` lists (`info,datalayer_sidecar=debug`),
/// matched with `tracing-subscriber`'s `Targets` rather than `EnvFilter`:
/// the same syntax minus span-field filters, without pulling a regex
/// engine into a binary whose resident size is part of its footprint.
pub fn init(log: &LogParams) -> LogGuard {
    // Reloadable, so a config reload can change the level without a
    // restart; the lock it reads per event is uncontended.
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter_of(log));
    let shared = Arc::new(Shared::default());
    let flusher = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || flush_loop(flusher))
        .ok();
    let result = match log.format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(JsonLayer {
                shared: shared.clone(),
            })
            .try_init(),
        LogFormat::Text => tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_target(true)
                    .with_writer(BufferedStdout {
                        shared: shared.clone(),
                    }),
            )
            .try_init(),
    };
    match result {
        Ok(()) => {
            let _ = FILTER.set(handle);
        }
        Err(e) => eprintln!("logging was already initialised: {e}"),
    }
    LogGuard { shared, thread }
}

/// Writes one JSON object per event: `timestamp`, `level`, the event's
/// fields, `target`.
#[derive(Debug)]
pub struct JsonLayer {
    shared: Arc<Shared>,
}

thread_local! {
    /// The line being built, and the formatted date of the current second.
    static LINE: RefCell<(String, u64, String)> = RefCell::new((String::with_capacity(1024), u64::MAX, String::new()));
}

impl<S: Subscriber> Layer<S> for JsonLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        LINE.with(|cell| {
            let Ok(mut cell) = cell.try_borrow_mut() else {
                return;
            };
            let (line, cached_sec, date) = &mut *cell;
            line.clear();
            let meta = event.metadata();
            line.push_str("{\"timestamp\":\"");
            push_timestamp(line, cached_sec, date, SystemTime::now());
            line.push_str("\",\"level\":\"");
            line.push_str(meta.level().as_str());
            line.push('"');
            event.record(&mut JsonFields { out: line });
            line.push_str(",\"target\":");
            push_json_str(line, meta.target());
            line.push_str("}\n");
            self.shared.append(line.as_bytes());
        });
    }
}

/// `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`, the date-time part reused within a second.
fn push_timestamp(out: &mut String, cached_sec: &mut u64, date: &mut String, now: SystemTime) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    if secs != *cached_sec {
        date.clear();
        let full = humantime::format_rfc3339_seconds(now).to_string();
        date.push_str(full.trim_end_matches('Z'));
        *cached_sec = secs;
    }
    out.push_str(date);
    out.push('.');
    let micros = d.subsec_micros();
    let mut digits = itoa::Buffer::new();
    let s = digits.format(micros);
    for _ in s.len()..6 {
        out.push('0');
    }
    out.push_str(s);
    out.push('Z');
}

struct JsonFields<'a> {
    out: &'a mut String,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        self.out.push_str(",\"");
        self.out.push_str(field.name());
        self.out.push_str("\":");
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_str(self.out, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            self.out.push_str(ryu::Buffer::new().format_finite(value));
        } else {
            self.out.push_str("null");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        self.key(field);
        self.out.push('"');
        let _ = write!(Escaper(self.out), "{value:?}");
        self.out.push('"');
    }
}

/// Appends what it is given with JSON string escaping.
struct Escaper<'a>(&'a mut String);

impl std::fmt::Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

fn escape_into(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    if !needs_escape(bytes) {
        out.push_str(s);
        return;
    }
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

/// Whether `bytes` hold a quote, a backslash or a control character,
/// eight bytes at a time: every access line runs each of its values
/// through this, and the byte loop was the line's largest single cost.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // A high bit set where a byte of `w` is below `n` (exact for n <= 0x80;
    // a borrow only ever flags bytes above one that already qualifies).
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_ne_bytes(word);
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        if below(w, 0x20) | below(quote, 1) | below(backslash, 1) != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    escape_into(out, s);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_byte_that_needs_escaping_at_every_position() {
        for len in 0..20 {
            for pos in 0..len {
                for b in 0u8..=0xff {
                    // Filler with the high bit set too: UTF-8 continuation
                    // bytes sit next to the byte looked for.
                    let mut v: Vec<u8> = (0..len)
                        .map(|i| if i % 2 == 0 { b'a' } else { 0xC3 })
                        .collect();
                    v[pos] = b;
                    let expected = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(needs_escape(&v), expected, "byte {b:#x} at {pos} of {len}");
                }
            }
        }
        // Multi-byte UTF-8 never needs escaping.
        assert!(!needs_escape("é…→ step ✓ 🙂".as_bytes()));
    }

    #[test]
    fn escapes_like_json() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é");
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn timestamp_is_rfc3339_with_micros() {
        let mut out = String::new();
        let (mut sec, mut date) = (u64::MAX, String::new());
        let t = UNIX_EPOCH + Duration::from_micros(1_764_165_531_000_042);
        push_timestamp(&mut out, &mut sec, &mut date, t);
        assert_eq!(out, "2025-11-26T13:58:51.000042Z");
        assert_eq!(humantime::parse_rfc3339(&out).unwrap(), t);
    }

    #[test]
    fn events_are_one_json_object_per_line() {
        let shared = Arc::new(Shared::default());
        let subscriber = tracing_subscriber::registry().with(JsonLayer {
            shared: shared.clone(),
        });
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "access", status = 200u64, ms = 1.5, ok = true, path = "/a\"b", none = Option::<u64>::None, "done {}", 7);
        });
        let buf = shared.buf.lock().unwrap().clone();
        let line = String::from_utf8(buf).unwrap();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["ms"], 1.5);
        assert_eq!(v["ok"], true);
        assert_eq!(v["path"], "/a\"b");
        assert!(v.get("none").is_none());
        assert_eq!(v["message"], "done 7");
        assert_eq!(v["target"], "access");
        assert_eq!(v["level"], "INFO");
        assert!(humantime::parse_rfc3339(v["timestamp"].as_str().unwrap()).is_ok());
    }
}
