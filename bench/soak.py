#!/usr/bin/env python3
"""A soak: the sidecar under steady step and thread writes for a long time,
with the flaky fault mix at the backend, a reload every minute and a kill -9
and restart every ten minutes. Run through bench/soak.sh.

It samples the sidecar's RSS, open descriptors, spool depth and the spool's
size on disk, and checks at the end, once the spool has drained, that every
write the sidecar acknowledged is at the backend (not lost) in the version
acknowledged last or a later one (not stale). Exit status 1 when something
was lost or stale, nothing was acknowledged, or the sidecar failed to start.

Each step and each thread is written by one worker, version after version,
each write sent once its predecessor was answered: the order the client
meant is known. A write not acknowledged (a structured error, a refused
connection while the sidecar restarts) is not counted; the worker goes on
with the next version, as an app that lost it would.
"""

import argparse
import asyncio
import csv
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from steps import add_step_query  # noqa: E402

FLAKY = {"faults": ["close", "502", "503", "504", "429", "hang"], "rate": 0.3, "seed": 11, "hang": 12}
UPSERT_THREAD = """mutation UpsertThread($threadId: String!, $name: String, $metadata: Json,
  $participantId: String, $tags: [String!]) {
  upsertThread(id: $threadId, name: $name, metadata: $metadata,
    participantId: $participantId, tags: $tags) { id name }
}"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url, data=None, timeout=10):
    # As JSON: the admin port refuses a form's body type on POST (a page of
    # any site could send one).
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class Sidecar:
    """The binary with the shipped config, on fixed ports so a restart takes
    the same addresses and the same spool."""

    def __init__(self, binary, run, upstream):
        self.binary, self.run = binary, run
        self.listen, self.admin = free_port(), free_port()
        self.spool_path = run / "spool.sqlite3"
        self.config = run / "sidecar.toml"
        self.generation = 0
        shipped = (REPO / "config" / "sidecar.toml").read_text()
        shipped = shipped.replace('url = "http://127.0.0.1:4000"', f'url = "{upstream}"')
        self.base = shipped.replace('path = "data/spool.sqlite3"', f'path = "{self.spool_path}"')
        assert self.base != shipped, "the shipped config names its upstream and spool"
        self.write_config()
        self.proc = None
        self.starts = 0

    def write_config(self):
        # A reload that changes something: the attempts alternate 4 / 3.
        attempts = 4 if self.generation % 2 == 0 else 3
        text = self.base.replace("max_attempts = 4", f"max_attempts = {attempts}")
        self.config.write_text(text)

    def start(self):
        log = open(self.run / f"sidecar-{self.starts}.log", "w")
        self.starts += 1
        self.proc = subprocess.Popen(
            [self.binary, "--config", str(self.config), "--listen", f"127.0.0.1:{self.listen}",
             "--admin-listen", f"127.0.0.1:{self.admin}"], stdout=log, stderr=log)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited {self.proc.returncode}")
            try:
                get_json(f"http://127.0.0.1:{self.admin}/healthz", timeout=1)
                return
            except (OSError, ValueError):
                time.sleep(0.05)
        raise TimeoutError("the sidecar did not answer /healthz in 30 s")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def reload(self):
        self.generation += 1
        self.write_config()
        return get_json(f"http://127.0.0.1:{self.admin}/reload", data=b"", timeout=10)

    def spool(self):
        return get_json(f"http://127.0.0.1:{self.admin}/spool", timeout=5)

    def sample(self):
        pid = self.proc.pid
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        disk = sum(p.stat().st_size for p in self.run.glob("spool.sqlite3*") if p.exists())
        return rss, fds, disk


class Load:
    """Workers writing steps (one to three per request, as the SDK batches
    them, each written in 1–3 versions) and threads (renamed version after
    version), at a steady overall rate."""

    def __init__(self, url, workers, rate, seed):
        self.url = url + "/api/graphql"
        self.workers, self.rate = workers, rate
        self.rng = random.Random(seed)
        self.acked_steps = {}
        self.acked_threads = {}
        self.acked = 0
        self.unacked = 0
        self.errors = {}
        self.stop = False

    async def send(self, client, body, check):
        try:
            r = await client.post(self.url, content=body, headers={"content-type": "application/json"})
            answer = r.json()
            ok = r.status_code == 200 and check(answer)
            reason = f"{r.status_code} {error_code(answer)}"
        except (httpx.HTTPError, ValueError) as e:
            ok, reason = False, type(e).__name__
        if ok:
            self.acked += 1
        else:
            self.unacked += 1
            self.errors[reason] = self.errors.get(reason, 0) + 1
        return ok

    async def worker(self, w):
        period = self.workers / self.rate
        n = 0
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(timeout=20, limits=limits) as client:
            nxt = time.monotonic()
            while not self.stop:
                n += 1
                if self.rng.random() < 0.2:
                    tid = f"t{w}-{self.rng.randrange(20)}"
                    version = self.acked_threads.get(tid, (0, 0))[1] + 1
                    body = json.dumps({"query": UPSERT_THREAD, "variables": {
                        "threadId": tid, "name": f"{tid} v{version}", "metadata": {}, "tags": None}})
                    nxt = await self.pace(nxt, period)
                    seen = self.acked_threads.get(tid, (0, 0))
                    if await self.send(client, body, lambda a: bool((a.get("data") or {}).get("upsertThread"))):
                        self.acked_threads[tid] = (version, version)
                    else:
                        self.acked_threads[tid] = (seen[0], version)
                    continue
                ids = [f"s{w}-{n}-{i}" for i in range(self.rng.randint(1, 3))]
                for version in range(1, self.rng.randint(1, 3) + 1):
                    variables = {}
                    for i, sid in enumerate(ids):
                        variables.update({
                            f"id_{i}": sid, f"threadId_{i}": f"t{w}-0", f"type_{i}": "assistant_message",
                            f"startTime_{i}": "2026-12-07T12:00:00.000Z", f"output_{i}": {"content": f"{sid} v{version}"},
                            f"metadata_{i}": {}, f"name_{i}": "Assistant"})
                    body = json.dumps({"query": add_step_query(len(ids)), "variables": variables})
                    nxt = await self.pace(nxt, period)

                    # Each alias the sidecar answered ok is acknowledged, even
                    # when another alias of the request was not.
                    acked_aliases = []

                    def all_ok(a, k=len(ids)):
                        data = a.get("data") or {}
                        acked_aliases.extend(i for i in range(k) if (data.get(f"step{i}") or {}).get("ok"))
                        return len(acked_aliases) == k

                    await self.send(client, body, all_ok)
                    for i in acked_aliases:
                        self.acked_steps[ids[i]] = version
                    if self.stop:
                        break

    async def pace(self, nxt, period):
        nxt += period
        delay = nxt - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            nxt = time.monotonic()
        return nxt

    async def run(self, seconds):
        tasks = [asyncio.create_task(self.worker(w)) for w in range(self.workers)]
        await asyncio.sleep(seconds)
        self.stop = True
        await asyncio.gather(*tasks)


def error_code(answer):
    """The structured error's code, or the first GraphQL error's."""
    if not isinstance(answer, dict):
        return "?"
    err = answer.get("error")
    if isinstance(err, dict):
        return str(err.get("code", "?"))
    errors = answer.get("errors") or [{}]
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    return str((first.get("extensions") or {}).get("code", "not_ok"))


def version_of(text):
    try:
        return int(str(text).rsplit(" v", 1)[1])
    except (IndexError, ValueError):
        return -1


def slope_per_hour(points):
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 3:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else 3600 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


def svg_plot(samples, kills, path, title):
    """RSS (MiB), descriptors and spool depth against time, kills marked."""
    w, h, left, right, top = 900, 420, 60, 60, 30
    panel = (h - top - 40) // 3
    t_max = max(s["t"] for s in samples) or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="13">{title}</text>']
    for i, (key, label, colour, scale) in enumerate([
            ("rss_kib", "RSS MiB", "#1f77b4", 1 / 1024), ("fds", "open fds", "#2ca02c", 1),
            ("spool_depth", "spool depth", "#d62728", 1)]):
        y0 = top + i * panel
        vals = [s[key] * scale for s in samples]
        vmax = max(vals) * 1.1 or 1
        pts = " ".join(f"{left + (s['t'] / t_max) * (w - left - right):.1f},"
                       f"{y0 + panel - 10 - (v / vmax) * (panel - 20):.1f}" for s, v in zip(samples, vals))
        out.append(f'<rect x="{left}" y="{y0}" width="{w - left - right}" height="{panel - 10}" fill="none" stroke="#ccc"/>')
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.2"/>')
        out.append(f'<text x="{w - right + 4}" y="{y0 + 12}">{label}</text>')
        out.append(f'<text x="{left - 4}" y="{y0 + 12}" text-anchor="end">{vmax:.0f}</text>')
        out.append(f'<text x="{left - 4}" y="{y0 + panel - 10}" text-anchor="end">0</text>')
    for k in kills:
        x = left + (k / t_max) * (w - left - right)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{h - 40}" stroke="#999" stroke-dasharray="3,3"/>')
    out.append(f'<text x="{left}" y="{h - 20}">0 s</text>')
    out.append(f'<text x="{w - right}" y="{h - 20}" text-anchor="end">{t_max:.0f} s (dashed: kill -9 and restart)</text>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out))


async def soak(a, sidecar, backend_ctl):
    load = Load(f"http://127.0.0.1:{sidecar.listen}", a.workers, a.rate, a.seed)
    samples, kills, reloads, reload_failures = [], [], 0, 0
    t0 = time.monotonic()
    load_task = asyncio.create_task(load.run(a.seconds))
    next_sample, next_reload, next_kill = 0.0, a.reload_every, a.kill_every
    loop = asyncio.get_running_loop()
    while not load_task.done():
        await asyncio.sleep(0.2)
        t = time.monotonic() - t0
        if t >= next_kill and t < a.seconds - 5:
            next_kill += a.kill_every
            await loop.run_in_executor(None, sidecar.kill9)
            kills.append(round(t, 1))
            await loop.run_in_executor(None, sidecar.start)
        if t >= next_reload:
            next_reload += a.reload_every
            try:
                r = await loop.run_in_executor(None, sidecar.reload)
                reloads += 1
                if r.get("result") != "applied":
                    reload_failures += 1
            except (OSError, ValueError) as e:
                reload_failures += 1
                print(f"reload at {t:.0f}s failed: {e}", file=sys.stderr)
        if t >= next_sample:
            next_sample += a.sample_every
            try:
                rss, fds, disk = sidecar.sample()
                depth = (await loop.run_in_executor(None, sidecar.spool)).get("depth", 0)
            except (OSError, ValueError):
                continue
            samples.append({"t": round(t, 1), "rss_kib": rss, "fds": fds, "spool_depth": depth,
                            "disk_bytes": disk, "acked": load.acked, "unacked": load.unacked,
                            "pid": sidecar.proc.pid})
    await load_task
    # Drain: the spool empties with the flaky mix still on.
    drained_at = None
    settle_deadline = time.monotonic() + a.settle
    while time.monotonic() < settle_deadline:
        s = sidecar.spool()
        if s.get("depth", 1) == 0:
            drained_at = round(time.monotonic() - t0, 1)
            break
        await asyncio.sleep(0.5)
    return load, samples, kills, reloads, reload_failures, drained_at


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binary", required=True)
    p.add_argument("--seconds", type=float, default=3600)
    p.add_argument("--reload-every", type=float, default=60)
    p.add_argument("--kill-every", type=float, default=600)
    p.add_argument("--sample-every", type=float, default=5)
    p.add_argument("--rate", type=float, default=40, help="requests per second, all workers")
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--settle", type=float, default=180, help="seconds the spool has to drain")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True, help="directory for samples.csv, summary.json, soak.svg")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    run = out / "run"
    run.mkdir(exist_ok=True)
    data_port, ctl_port = free_port(), free_port()
    backend = subprocess.Popen([sys.executable, str(REPO / "tests" / "e2e" / "backend.py"),
                                "--port", str(data_port), "--control-port", str(ctl_port)],
                               stdout=open(run / "backend.log", "w"), stderr=subprocess.STDOUT)
    ctl = f"http://127.0.0.1:{ctl_port}"
    sidecar = None
    try:
        deadline = time.time() + 20
        while True:
            try:
                get_json(ctl + "/schedule", data=json.dumps(FLAKY).encode())
                break
            except OSError:
                if time.time() > deadline or backend.poll() is not None:
                    raise
                time.sleep(0.1)
        sidecar = Sidecar(a.binary, run, f"http://127.0.0.1:{data_port}")
        sidecar.start()
        load, samples, kills, reloads, reload_failures, drained_at = asyncio.run(soak(a, sidecar, ctl))
        spool = sidecar.spool()
        state = get_json(ctl + "/summary", timeout=60)
        lost = [s for s in load.acked_steps if s not in state["steps"]]
        stale = [s for s, v in load.acked_steps.items()
                 if s in state["steps"] and version_of(state["steps"][s]) < v]
        threads_lost = [t for t, (v, _) in load.acked_threads.items() if v and t not in state["threads"]]
        threads_stale = [t for t, (v, _) in load.acked_threads.items()
                         if v and t in state["threads"] and version_of(state["threads"][t].get("name")) < v]
        # Per life of the process (a kill -9 starts a new one): the slope
        # after the first minute, and each life's peak.
        lives = {}
        for s in samples:
            lives.setdefault(s["pid"], []).append(s)
        per_life = []
        for pid, ss in lives.items():
            warm = [s for s in ss if s["t"] - ss[0]["t"] >= min(60, a.kill_every / 4)]
            per_life.append({
                "from_s": ss[0]["t"], "to_s": ss[-1]["t"],
                "rss_peak_mib": round(max(s["rss_kib"] for s in ss) / 1024, 2),
                "rss_slope_mib_per_h": round(slope_per_hour([(s["t"], s["rss_kib"] / 1024) for s in warm]), 2),
                "fds_peak": max(s["fds"] for s in ss),
                "fds_slope_per_h": round(slope_per_hour([(s["t"], s["fds"]) for s in warm]), 2),
            })
        summary = {
            "seconds": a.seconds, "rate": a.rate, "workers": a.workers,
            "acknowledged": load.acked, "not_acknowledged": load.unacked, "not_acknowledged_by_reason": load.errors,
            "steps_acknowledged": len(load.acked_steps),
            "threads_acknowledged": sum(1 for v, _ in load.acked_threads.values() if v),
            "lost": len(lost) + len(threads_lost), "stale": len(stale) + len(threads_stale),
            "lost_samples": (lost + threads_lost)[:5], "stale_samples": (stale + threads_stale)[:5],
            "backend_requests": state["requests"], "faults": state["faults"],
            "kills": len(kills), "reloads": reloads, "reload_failures": reload_failures,
            "spool_drained_at_s": drained_at, "spool_at_end": spool,
            "rss_peak_mib": round(max(s["rss_kib"] for s in samples) / 1024, 2) if samples else None,
            "fds_peak": max((s["fds"] for s in samples), default=None),
            "disk_peak_mib": round(max((s["disk_bytes"] for s in samples), default=0) / 2**20, 2),
            "spool_depth_peak": max((s["spool_depth"] for s in samples), default=None),
            "lives": per_life,
        }
        with open(out / "samples.csv", "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(samples[0].keys()) if samples else ["t"])
            wr.writeheader()
            wr.writerows(samples)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        if samples:
            svg_plot(samples, kills, out / "soak.svg",
                     f"soak: {a.seconds:.0f} s, {a.rate:.0f} writes/s, flaky mix, reload every "
                     f"{a.reload_every:.0f} s, kill -9 every {a.kill_every:.0f} s")
        print(json.dumps({k: v for k, v in summary.items() if k != "lives"}, indent=2))
        for life in per_life:
            print("life", json.dumps(life))
        bad = summary["lost"] or summary["stale"] or not load.acked or drained_at is None
        if bad:
            print("soak: FAILED (lost, stale, nothing acknowledged, or the spool did not drain)", file=sys.stderr)
        return 1 if bad else 0
    finally:
        if sidecar:
            sidecar.stop()
        backend.terminate()
        backend.wait()


if __name__ == "__main__":
    sys.exit(main())
