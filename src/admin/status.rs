//! The status page, `GET /` on the admin port: "is my data getting
//! through?" at a glance.
//!
//! One self-contained HTML document — no script, no external asset, an
//! inline SVG chart — that refreshes itself every few seconds and reads as
//! plain tables in a terminal browser. Written by hand with `format!`: the
//! page is one small template, and a template engine would add more code
//! and binary than the page itself.
//!
//! The figures come from the same counters as `/metrics` and from the
//! status board ([`crate::board`]), which the edge counts into as it writes
//! the access line.

use std::fmt::Write as _;
use std::time::Duration;

pub use crate::board::{ErrorEntry, LastMinute, SAMPLE_EVERY, StatusBoard};
use crate::breaker::Snapshot;
use crate::clock::now_ms;
use crate::exchange::NotRetried;
use crate::generation::ReloadReport;
use crate::metrics::RouteMetrics;
use crate::spool::SpoolStatus;

/// What the page shows besides the board.
#[derive(Debug)]
pub struct PageInput<'a> {
    /// The board.
    pub board: &'a StatusBoard,
    /// The breaker.
    pub breaker: Snapshot,
    /// The spool, when one is open (`Err` when it cannot be read).
    pub spool: Option<Result<SpoolStatus, String>>,
    /// The current generation's routes.
    pub routes: &'a [std::sync::Arc<RouteMetrics>],
    /// The generation in force.
    pub generation: u64,
    /// The last reload, if any.
    pub last_reload: Option<ReloadReport>,
    /// The upstream's origin (no credentials: the config refuses them).
    pub upstream: String,
    /// The phase (`serving`, `draining`, ...).
    pub phase: &'static str,
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn ago(at_ms: i64) -> String {
    if at_ms <= 0 {
        return "-".to_string();
    }
    let secs = ((now_ms() - at_ms).max(0) / 1000) as u64;
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

fn utc(at_ms: i64) -> String {
    if at_ms <= 0 {
        return "-".to_string();
    }
    let t = std::time::UNIX_EPOCH + Duration::from_millis(at_ms as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The spool depth over the sampled minutes, as an inline SVG polyline.
fn chart(points: &[(i64, u64)]) -> String {
    let (w, h) = (480.0_f64, 100.0_f64);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" role=\"img\" aria-label=\"spool depth over time\">\
         <rect width=\"{w}\" height=\"{h}\" fill=\"#fafafa\" stroke=\"#ccc\"/>",
        h + 16.0
    );
    if points.len() < 2 {
        svg.push_str("<text x=\"8\" y=\"54\" font-size=\"12\" fill=\"#666\">collecting samples…</text></svg>");
        return svg;
    }
    let (t0, t1) = (points[0].0, points[points.len() - 1].0);
    let span = (t1 - t0).max(1) as f64;
    let top = points.iter().map(|p| p.1).max().unwrap_or(0).max(1) as f64;
    let mut line = String::new();
    for (t, d) in points {
        let x = (*t - t0) as f64 / span * (w - 2.0) + 1.0;
        let y = h - 1.0 - (*d as f64 / top) * (h - 2.0);
        let _ = write!(line, "{x:.1},{y:.1} ");
    }
    let _ = write!(
        svg,
        "<polyline fill=\"none\" stroke=\"#e65100\" stroke-width=\"2\" points=\"{}\"/>\
         <text x=\"4\" y=\"12\" font-size=\"11\" fill=\"#333\">{}</text>\
         <text x=\"4\" y=\"{}\" font-size=\"11\" fill=\"#333\">over {} · max {}</text></svg>",
        line.trim_end(),
        top as u64,
        h + 13.0,
        humantime::format_duration(Duration::from_secs((span / 1000.0).round() as u64)),
        top as u64
    );
    svg
}

/// How the last minute went, as the badge at the top says it.
struct Health {
    /// `ok`, `degraded` or `failing`; also the page's title.
    label: &'static str,
    /// The badge's background.
    colour: &'static str,
    /// The sentence next to the badge.
    summary: &'static str,
}

/// Any failure in the last minute degrades the page; it is failing only
/// when nothing got through at all.
fn health(lm: &LastMinute) -> Health {
    let (label, colour, summary) = if lm.failed == 0 {
        ("ok", "#2e7d32", "data is getting through")
    } else if lm.answered + lm.spooled > 0 {
        (
            "degraded",
            "#ef6c00",
            "some requests failed in the last minute",
        )
    } else {
        ("failing", "#c62828", "requests are failing")
    };
    Health {
        label,
        colour,
        summary,
    }
}

/// Render the page.
pub fn render(p: &PageInput<'_>) -> String {
    // Read once: the badge and the table must tell the same minute.
    let lm = p.board.last_minute();
    let health = health(&lm);
    let mut o = String::with_capacity(8 * 1024);
    write_head(&mut o, &health);
    write_banner(&mut o, &health, p);
    write_last_minute(&mut o, &lm, p.board.totals());
    write_breaker(&mut o, &p.breaker);
    write_spool(&mut o, p.spool.as_ref());
    write_depth_chart(&mut o, p);
    write_retries(&mut o, p.routes);
    write_last_errors(&mut o, p.board);
    write_config(&mut o, p.generation, p.last_reload.as_ref());
    o
}

/// The document's head: refresh, viewport, title and the inline style
/// (the page loads nothing else).
fn write_head(o: &mut String, health: &Health) {
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>datalayer-sidecar · {}</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:1.5em;max-width:60em;color:#222}}\
         table{{border-collapse:collapse;margin:.4em 0 1.2em}}td,th{{border:1px solid #ddd;padding:.25em .6em;text-align:left}}\
         th{{background:#f3f3f3}}td.n{{text-align:right;font-variant-numeric:tabular-nums}}\
         .badge{{display:inline-block;padding:.1em .6em;border-radius:.3em;color:#fff}}</style></head><body>",
        health.label
    );
}

/// The heading line: the badge, the upstream and the phase.
fn write_banner(o: &mut String, health: &Health, p: &PageInput<'_>) {
    let _ = write!(
        o,
        "<h1>datalayer-sidecar</h1><p><span class=\"badge\" id=\"verdict\" style=\"background:{}\">{}</span> {} · upstream <code>{}</code> · phase <b id=\"phase\">{}</b></p>",
        health.colour,
        health.label,
        health.summary,
        esc(&p.upstream),
        p.phase
    );
}

/// Answered, spooled and failed: the last minute beside the totals.
fn write_last_minute(o: &mut String, lm: &LastMinute, totals: (u64, u64, u64)) {
    let (answered_total, spooled_total, failed_total) = totals;
    let _ = write!(
        o,
        "<h2>Last minute</h2><table id=\"last-minute\"><tr><th></th><th>last {}s</th><th>since start</th></tr>\
         <tr><td>answered by the upstream</td><td class=\"n\" id=\"answered\">{}</td><td class=\"n\" id=\"answered-total\">{}</td></tr>\
         <tr><td>acknowledged from the spool</td><td class=\"n\" id=\"spooled\">{}</td><td class=\"n\" id=\"spooled-total\">{}</td></tr>\
         <tr><td>failed</td><td class=\"n\" id=\"failed\">{}</td><td class=\"n\" id=\"failed-total\">{}</td></tr></table>",
        lm.seconds, lm.answered, answered_total, lm.spooled, spooled_total, lm.failed, failed_total
    );
}

/// The breaker's state, since when, its window and why it last tripped.
fn write_breaker(o: &mut String, b: &Snapshot) {
    let _ = write!(
        o,
        "<h2>Circuit breaker</h2><table id=\"breaker\"><tr><td>state</td><td id=\"breaker-state\">{}{}</td></tr>\
         <tr><td>since</td><td>{} ({})</td></tr><tr><td>window</td><td>{} calls, {} transient failures</td></tr>\
         <tr><td>last trip reason</td><td>{}</td></tr></table>",
        b.state,
        if b.enabled { "" } else { " (disabled)" },
        utc(b.since_ms),
        ago(b.since_ms),
        b.window_calls,
        b.window_failures,
        if b.last_trip_reason.is_empty() {
            "-"
        } else {
            b.last_trip_reason
        }
    );
}

/// The spool's table, or why there is none.
fn write_spool(o: &mut String, spool: Option<&Result<SpoolStatus, String>>) {
    o.push_str("<h2>Spool</h2>");
    match spool {
        None => o.push_str("<p id=\"spool\">No route spools; the spool is not open.</p>"),
        Some(Err(e)) => {
            let _ = write!(o, "<p id=\"spool\">cannot read the spool: {}</p>", esc(e));
        }
        Some(Ok(s)) => {
            let _ = write!(
                o,
                "<table id=\"spool\"><tr><td>waiting writes</td><td class=\"n\" id=\"spool-depth\">{}</td></tr>\
                 <tr><td>bytes</td><td class=\"n\" id=\"spool-bytes\">{}</td></tr>\
                 <tr><td>oldest entry</td><td class=\"n\" id=\"spool-oldest\">{}</td></tr>\
                 <tr><td>dead letters</td><td class=\"n\" id=\"spool-dead-letters\">{}</td></tr>\
                 <tr><td>worker</td><td id=\"spool-worker\">{}</td></tr>\
                 <tr><td>disk</td><td class=\"n\">{} of {} max</td></tr></table>",
                s.stats.depth,
                s.stats.bytes,
                s.stats
                    .oldest_age_seconds
                    .map_or("-".to_string(), |a| format!("{a:.0} s")),
                s.stats.dead_letters,
                worker_state(s),
                bytesize::ByteSize(s.disk.disk_bytes),
                bytesize::ByteSize(s.max_bytes),
            );
        }
    }
}

/// What the replay worker is doing. A worker that is down outranks a
/// pause: the pause it recorded no longer says why nothing is delivered.
fn worker_state(s: &SpoolStatus) -> String {
    match &s.paused {
        _ if !s.worker.is_running() => format!(
            "{}: {} ({} restarts)",
            s.worker.state,
            esc(s.worker.last_failure.as_deref().unwrap_or("-")),
            s.worker.restarts
        ),
        Some(x) => format!(
            "paused: {} ({}) since {}",
            esc(&x.reason),
            esc(&x.detail),
            ago(x.since_ms)
        ),
        None => "delivering".to_string(),
    }
}

/// The sampled spool depth, ending with the depth read now (0 when the
/// spool is not open or cannot be read).
fn write_depth_chart(o: &mut String, p: &PageInput<'_>) {
    let _ = write!(
        o,
        "<p>Waiting writes over the last minutes (sampled every {} s):</p>{}",
        SAMPLE_EVERY.as_secs(),
        chart(&p.board.depths(match &p.spool {
            Some(Ok(s)) => s.stats.depth,
            _ => 0,
        }))
    );
}

/// Retries started and failures not retried, per route, then the
/// failures not retried summed over the routes by reason.
fn write_retries(o: &mut String, routes: &[std::sync::Arc<RouteMetrics>]) {
    o.push_str(
        "<h2>Retries</h2><table id=\"retries\"><tr><th>route</th><th>retries started</th><th>failed, not retried</th></tr>",
    );
    let mut by_reason = [0u64; NotRetried::ALL.len()];
    for r in routes {
        let mut not_retried = 0;
        for (i, (_, n)) in r.not_retried_counts().enumerate() {
            not_retried += n;
            if let Some(slot) = by_reason.get_mut(i) {
                *slot += n;
            }
        }
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"n\" data-route=\"{}\" data-reason=\"retries\">{}</td><td class=\"n\">{not_retried}</td></tr>",
            esc(r.name()),
            esc(r.name()),
            r.retries.get()
        );
    }
    o.push_str("</table><p>Not retried because…</p><table id=\"not-retried\"><tr><th>reason</th><th>requests</th></tr>");
    for (reason, n) in NotRetried::ALL.iter().zip(by_reason) {
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"n\" data-reason=\"{}\">{n}</td></tr>",
            reason.as_str(),
            reason.as_str()
        );
    }
    o.push_str("</table>");
}

/// The ten most recent structured errors, newest first.
fn write_last_errors(o: &mut String, board: &StatusBoard) {
    o.push_str("<h2>Last errors</h2>");
    let errors = board.recent_errors(10);
    if errors.is_empty() {
        o.push_str("<p id=\"errors\">none</p>");
        return;
    }
    o.push_str(
        "<table id=\"errors\"><tr><th>when</th><th>code</th><th>status</th><th>route</th></tr>",
    );
    for e in errors {
        let _ = write!(
            o,
            "<tr><td>{} ({})</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            utc(e.at_ms),
            ago(e.at_ms),
            e.code,
            e.status,
            esc(&e.route)
        );
    }
    o.push_str("</table>");
}

/// The generation and the last reload, the links to the machine-readable
/// endpoints, and the end of the document.
fn write_config(o: &mut String, generation: u64, last_reload: Option<&ReloadReport>) {
    let _ = write!(
        o,
        "<h2>Config</h2><table id=\"config\"><tr><td>generation</td><td class=\"n\" id=\"generation\">{}</td></tr>\
         <tr><td>last reload</td><td id=\"last-reload\">{}</td></tr></table>\
         <p>JSON and text: <a href=\"/metrics\">/metrics</a> · <a href=\"/spool\">/spool</a> · <a href=\"/breaker\">/breaker</a> · <a href=\"/config\">/config</a> · <a href=\"/readyz\">/readyz</a></p>\
         <p><small>rendered {}</small></p></body></html>",
        generation,
        reload_outcome(last_reload),
        utc(now_ms())
    );
}

/// How the last reload ended: its result, what asked for it, when, and
/// what it could not apply.
fn reload_outcome(last_reload: Option<&ReloadReport>) -> String {
    let Some(r) = last_reload else {
        return "none since start".to_string();
    };
    let mut s = format!("{} ({:?}) {}", r.result, r.trigger, ago(r.at_ms));
    if let Some(e) = &r.error {
        let _ = write!(s, ": {}", esc(e));
    }
    if !r.restart_needed.is_empty() {
        let _ = write!(s, "; restart needed for {}", r.restart_needed.join(", "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped() {
        assert_eq!(esc("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
    }
}
