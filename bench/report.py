#!/usr/bin/env python3
"""Turn bench/out/*.json* into docs/benchmarks.md and docs/benchmarks.svg.

Reads throughput.jsonl and memory.jsonl (bench/run.sh), faults.jsonl
(bench/faults.sh), spool.json (bench/spool.sh) and env.json. Every figure in
the document comes from those files; nothing is typed in by hand except the
prose around the tables (bench/notes.md, appended verbatim if present).
"""

import json
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
DOCS = BENCH.parent / "docs"
TARGETS = ["direct", "nginx", "haproxy", "hyper", "sidecar"]
LABEL = {"direct": "upstream alone", "nginx": "nginx 1.22", "haproxy": "HAProxy 2.6",
         "hyper": "bare hyper proxy (floor)",
         "sidecar": "datalayer-sidecar", "sidecar_no_spool": "datalayer-sidecar, spool off"}
COLOR = {"direct": "#9e9e9e", "nginx": "#2e7d32", "haproxy": "#1565c0", "hyper": "#6a1b9a",
         "sidecar": "#e65100"}


def load_jsonl(name):
    p = OUT / name
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()] if p.exists() else []


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=1):
    return "–" if x is None else f"{x:,.{nd}f}"


def throughput_tables(rows, memory):
    out = []
    for conns in sorted({r["conns"] for r in rows}):
        sub = [r for r in rows if r["conns"] == conns]
        rounds = len({r["round"] for r in sub})
        out.append(f"\n### {conns} connections ({rounds} interleaved rounds)\n")
        out.append("| target | req/s median (min–max) | p50 ms | p99 ms | p99.9 ms | proxy CPU µs/req median (min–max) | CPU vs nginx | CPU vs bare hyper | peak RSS MiB | idle RSS MiB | errors |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        ng_cpu = med([r["proxy_cpu_us_per_req"] for r in sub if r["target"] == "nginx"])
        hy_cpu = med([r["proxy_cpu_us_per_req"] for r in sub if r["target"] == "hyper"])
        for t in TARGETS:
            tr = [r for r in sub if r["target"] == t]
            if not tr:
                continue
            rps = [r["rps"] for r in tr]
            cpu = [r["proxy_cpu_us_per_req"] for r in tr]
            mem = next((m for m in memory if m["target"] == t and m["conns"] == conns), None)
            cpu_m = med(cpu)
            ratio = f"{cpu_m / ng_cpu:.2f}×" if cpu_m and ng_cpu else "–"
            ratio_hy = f"{cpu_m / hy_cpu:.2f}×" if cpu_m and hy_cpu else "–"
            out.append(
                f"| {LABEL[t]} | {fmt(med(rps), 0)} ({fmt(min(rps), 0)}–{fmt(max(rps), 0)}) "
                f"| {fmt(med([r['p50_ms'] for r in tr]), 2)} | {fmt(med([r['p99_ms'] for r in tr]), 2)} "
                f"| {fmt(med([r['p999_ms'] for r in tr]), 2)} "
                f"| {fmt(cpu_m) if cpu_m else '(upstream only)'}{'' if not cpu_m else f' ({fmt(min(cpu))}–{fmt(max(cpu))})'} "
                f"| {ratio if t != 'direct' else '–'} | {ratio_hy if t != 'direct' else '–'} "
                f"| {fmt(mem['peak_rss_kib'] / 1024) if mem else '–'} | {fmt(mem['idle_rss_kib'] / 1024) if mem else '–'} "
                f"| {sum(r['errors'] + r['non2xx'] for r in tr)} |")
    return "\n".join(out)


def faults_table(rows):
    if not rows:
        return "_not run_"
    out = ["| target | success seen by the client | p99 ms | max ms | upstream attempts per request | steps stored upstream | spool empty after the run | client outcomes |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(r["outcomes"].items()))
        drained = r.get("spool_drained_after_s")
        drained = "–" if drained is None else f"{drained:.1f} s"
        out.append(f"| {LABEL.get(r['target'], r['target'])} | {100 * r['success_rate']:.2f}% ({r['succeeded']}/{r['requests']}) "
                   f"| {fmt(r['p99_ms'], 0)} | {fmt(r['max_ms'], 0)} | {r['attempts_per_request']:.3f} | {r['stored_upstream']} | {drained} | {outcomes} |")
    return "\n".join(out)


def spool_table(spool):
    if not spool:
        return "_not run_"
    rows = spool["rows"]
    out = ["| phase | writes/s | p50 ms | p99 ms | p99.9 ms | other |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        other = []
        for k in ("writes_per_commit", "cpu_us_per_write", "queue_after_1s", "entries", "seconds", "drain_per_s", "round",
                  "errors", "depth", "refused_spool_full", "disk_peak_mib", "bound_mib", "wal_mib",
                  "upstream_requests", "steps_delivered", "steps_per_request", "sidecar_cpu_us_per_step",
                  "outage_s", "rate", "waiting_at_return", "seconds_to_empty"):
            if k in r:
                other.append(f"{k}={r[k]}")
        out.append(f"| {r['phase']} | {fmt(r.get('writes_per_s', r.get('drain_per_s')), 0)} | {fmt(r.get('p50_ms'), 2)} "
                   f"| {fmt(r.get('p99_ms'), 2)} | {fmt(r.get('p999_ms'), 2)} | {', '.join(other)} |")
    return "\n".join(out)


def latency_table(rows):
    """Latency added per request at an open-loop rate: each target's p50 and
    p99 minus the upstream alone's in the same round, medians over rounds."""
    if not rows:
        return "_not run_"
    out = ["| rate | target | p50 µs | p99 µs | added p50 µs | added p99 µs | rounds |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for rate in sorted({r["rate"] for r in rows}):
        base = {r["round"]: r for r in rows if r["rate"] == rate and r["target"] == "direct"}
        for t in ("direct", "nginx", "hyper", "sidecar"):
            mine = [r for r in rows if r["rate"] == rate and r["target"] == t and r["round"] in base]
            if not mine:
                continue
            add50 = med([r["p50_us"] - base[r["round"]]["p50_us"] for r in mine])
            add99 = med([r["p99_us"] - base[r["round"]]["p99_us"] for r in mine])
            added = ("–", "–") if t == "direct" else (f"{add50:.0f}", f"{add99:.0f}")
            out.append(f"| {rate:,}/s | {LABEL.get(t, t)} | {med([r['p50_us'] for r in mine]):.0f} "
                       f"| {med([r['p99_us'] for r in mine]):.0f} | {added[0]} | {added[1]} | {len(mine)} |")
    return "\n".join(out)


def postgres_table(pg):
    if not pg:
        return "_not run_"
    out = ["| phase | round | writes/s | p50 ms | p99 ms | p99.9 ms | other |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in pg["rows"]:
        other = []
        for k in ("writes_per_commit", "sidecar_cpu_us_per_write", "database_cpu_us_per_write", "errors",
                  "max_ms", "queue_after_1s", "sidecars", "entries", "seconds", "drain_per_s",
                  "sidecar_cpu_us_per_step", "database_cpu_us_per_step"):
            if r.get(k) is not None:
                other.append(f"{k}={r[k]}")
        out.append(f"| {r['phase']} | {r.get('round', '–')} | {fmt(r.get('writes_per_s', r.get('drain_per_s')), 0)} "
                   f"| {fmt(r.get('p50_ms'), 2)} | {fmt(r.get('p99_ms'), 2)} | {fmt(r.get('p999_ms'), 2)} | {', '.join(other)} |")
    return "\n".join(out)


def svg(rows):
    """Grouped bars: throughput and p99 per target, at each connection count."""
    conns_list = sorted({r["conns"] for r in rows})
    panels = [("Throughput (req/s, median)", "rps", 1), ("p99 latency (ms, median)", "p99_ms", 1),
              ("Proxy CPU per request (µs, median)", "proxy_cpu_us_per_req", 1)]
    w, h = 1350, 360
    pw, ph = 400, 250
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>']
    for pi, (title, key, _) in enumerate(panels):
        x0 = 50 + pi * (pw + 50)
        y0 = 40
        vals = {(c, t): med([r[key] for r in rows if r["conns"] == c and r["target"] == t]) for c in conns_list for t in TARGETS}
        top = max(v for v in vals.values() if v) * 1.15
        if key.startswith("proxy"):
            parts.append(f'<text x="{x0 + pw / 2}" y="{y0 + 12}" text-anchor="middle" font-size="10">(upstream alone: no proxy)</text>')
        parts.append(f'<text x="{x0 + pw / 2}" y="22" text-anchor="middle" font-weight="bold">{title}</text>')
        parts.append(f'<line x1="{x0}" y1="{y0 + ph}" x2="{x0 + pw}" y2="{y0 + ph}" stroke="black"/>')
        gw = pw / len(conns_list)
        bw = gw / (len(TARGETS) + 1)
        for ci, c in enumerate(conns_list):
            gx = x0 + ci * gw
            parts.append(f'<text x="{gx + gw / 2}" y="{y0 + ph + 18}" text-anchor="middle">{c} connections</text>')
            for ti, t in enumerate(TARGETS):
                v = vals[(c, t)]
                if not v:
                    continue
                bh = ph * v / top
                bx = gx + bw / 2 + ti * bw
                parts.append(f'<rect x="{bx:.1f}" y="{y0 + ph - bh:.1f}" width="{bw * 0.9:.1f}" height="{bh:.1f}" fill="{COLOR[t]}"/>')
                label = f"{v:,.0f}" if key == "rps" else (f"{v:.1f}" if key.startswith("proxy") else f"{v:.2f}")
                parts.append(f'<text x="{bx + bw * 0.45:.1f}" y="{y0 + ph - bh - 4:.1f}" text-anchor="middle" font-size="9">{label}</text>')
    for ti, t in enumerate(TARGETS):
        lx = 40 + ti * 250
        parts.append(f'<rect x="{lx}" y="{h - 30}" width="12" height="12" fill="{COLOR[t]}"/>')
        parts.append(f'<text x="{lx + 18}" y="{h - 20}">{LABEL[t]}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def main():
    env = json.loads((OUT / "env.json").read_text()) if (OUT / "env.json").exists() else {}
    rows = load_jsonl("throughput.jsonl")
    memory = load_jsonl("memory.jsonl")
    faults = load_jsonl("faults.jsonl")
    latency = load_jsonl("latency.jsonl")
    spool = json.loads((OUT / "spool.json").read_text()) if (OUT / "spool.json").exists() else None
    pg = json.loads((OUT / "postgres.json").read_text()) if (OUT / "postgres.json").exists() else None
    DOCS.mkdir(exist_ok=True)
    if rows:
        (DOCS / "benchmarks.svg").write_text(svg(rows))
    notes = (BENCH / "notes.md").read_text() if (BENCH / "notes.md").exists() else ""
    doc = f"""# Benchmarks

Generated by `bench/report.py` from the raw results in `bench/out/` (also kept
in `docs/bench-data/`). Reproduce everything with `bash bench/all.sh` (it
installs nginx, HAProxy and wrk from Debian's packages and a Python venv for
the fault client).

## Latency added per request, at a realistic load

`bench/latency.sh`: an open loop (`examples/loadgen.rs`, 32 keep-alive connections, each
request timed from its scheduled send) at 500 and 5,000 requests/s — the rates a busy
app reaches, far below saturation — through each proxy to the same upstream, rounds
interleaved. "Added" is a target's percentile minus the upstream alone's in the same
round (median over rounds). The sidecar runs its shipped config, every feature on.

{latency_table(latency)}

## Machine and method

- {env.get('cpus', '?')} CPUs ({env.get('cpu_model', '?')}), Linux {env.get('kernel', '?')}; {env.get('nginx', '')}; {env.get('haproxy', '')}; {env.get('wrk', '')}; {env.get('sidecar', '')} ({env.get('rustc', '')}).
- The upstream (nginx answering a LiteralAI `AddStep` from memory) and the proxy under
  test share core {env.get('proxy_core', 0)}; the load generator runs on core {env.get('load_core', 1)}.
- Load: `wrk`, one thread, keep-alive, POST of a {env.get('body_bytes', '~1400')}-byte `mutation AddStep`
  body exactly as the LiteralAI SDK writes it (`bench/steps.py`), each request with its own
  step id. {env.get('rounds', '?')} rounds of {env.get('duration_s', '?')} s per target and connection count, interleaved
  (upstream alone, nginx, HAProxy, bare hyper proxy, sidecar, upstream alone, …) so drift on this shared
  machine falls on every target alike. Medians across rounds, with the range.
- Proxy CPU per request: utime + stime of the proxy's processes from `/proc/<pid>/stat`
  before and after each run, divided by the requests served. Peak RSS: `VmHWM` (largest
  process), idle RSS: `VmRSS` before the first run.
- nginx and HAProxy run as resilient proxies: connect 2 s / read 3 s timeouts, 3 attempts on
  error, timeout, 502, 503, 504, POST included (`bench/conf/`). nginx writes a buffered access
  log; HAProxy logs nothing (it has no buffered file log). The sidecar runs its shipped
  `config/sidecar.toml` with the whole stack on: route match on the parsed GraphQL
  operation, GraphQL response classification, deadline, retry with budget, breaker,
  upstream concurrency limit, metrics, one JSON access line per request, spool on standby.
- The bare hyper proxy (`examples/bare_proxy.rs`) is the floor the sidecar is built on:
  hyper's HTTP/1 server and hyper-util's pooled client with the sidecar's allocator and
  runtime and none of its layers (no body read, GraphQL, retries, metrics or log).

![throughput and p99 per target](benchmarks.svg)

## Throughput, latency, CPU and memory
{throughput_tables(rows, memory) if rows else '_not run_'}

## Faults: a misbehaving upstream behind each proxy

`bench/faults.sh`: 30% of upstream attempts fail (connection closed, 502, 503, 429 with
`Retry-After: 1`, or a hang longer than every timeout), decided by (seed, step id,
attempt), so every target meets the same faults. The client is httpx with the SDK's
10 s timeout and counts a write as successful the way the SDK does (2xx, JSON, no
`errors`, every `ok` true).

{faults_table(faults)}

## Spool: durable commits and drain

`bench/spool.sh`: step writes in write-behind mode (every write committed with
`synchronous=FULL` before its acknowledgement). A1: the most the commit path takes,
closed loop. A2: a fixed rate, open loop (`examples/loadgen.rs`), acknowledgement latency
from each write's scheduled time, backend down so nothing drains and the spool grows.
B: drain of the queue to the local backend. C: fixed rate with the backend up, draining at
the same time. D: a fresh spool with `spool.max_bytes = 256MiB` and a closed-loop burst
with the backend down: the files' high-water mark against the bound (`max_bytes` + 64 MiB).
`disk_peak_mib`: the spool's files (database, write-ahead log, shared memory) at their
largest so far in the run, sampled every 100 ms.

B1 drains with the shipped `spool.replay_batch` (waiting steps joined into batched
requests, each alias settled on its own) to `examples/literal_backend.rs`, a backend
that answers every alias of a request; B2 drains a copy of the same spool with
`replay_batch = 1` (one entry per request). R: the shipped config (spool on failure),
writes at a steady rate throughout, the backend down for `outage_s`, then up: time from
its return to an empty queue, and upstream requests per delivered step meanwhile.

{spool_table(spool)}

## Shared spool on PostgreSQL

`bench/postgres.sh`: the spool in a local PostgreSQL server (Debian's, a throwaway
cluster with `fsync` and `synchronous_commit` on) against the SQLite spool, same run,
same machine. The server shares core 0 with the sidecar; the load generator has core 1.
W: backend down, closed loop at 32 connections (`wrk`), rounds alternating SQLite and
PostgreSQL: acknowledged writes/s, latency, CPU per write of the sidecar and of the
server. O: then, on the same sidecar (the store now holds the W phase's writes), an open
loop at 5,000 writes/s (`loadgen`), latency from each write's scheduled time. L: the
backend up and a fresh store, an open loop at 5,000 writes/s: normal operation, every
spooled write committed then delivered. D: a shared store filled with the backend down,
then drained to the backend (`examples/literal_backend.rs`) by one sidecar, and
(refilled) by two.

{postgres_table(pg)}

{notes}
"""
    (DOCS / "benchmarks.md").write_text(doc)
    data = DOCS / "bench-data"
    data.mkdir(exist_ok=True)
    for f in OUT.glob("*.json*"):
        if f.name.startswith(("postgres-", "spool-")):
            continue  # a run of some phases only: not behind the tables
        (data / f.name).write_text(f.read_text())
    print(f"wrote {DOCS / 'benchmarks.md'} and {DOCS / 'benchmarks.svg'}", file=sys.stderr)


if __name__ == "__main__":
    main()
