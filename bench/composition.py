#!/usr/bin/env python3
"""Issue 18's figures, measured: the promise where features meet.

Run by bench/composition.sh (which builds the release binaries, pins cores
and sets the environment below); prints one JSON line per measurement and a
summary table. Every process it starts is stopped by PID.

  hot_key    32 connections write one step for 5 s against a healthy
             backend (wrk, VERSIONED=1): writes/s, the share answered from
             the spool, and how long the spool takes to empty afterwards.
  drain      N versions of one step are spooled while the backend is down;
             then it comes up: versions delivered per second.
  wide       with the spool non-empty (the backend down), AddSteps of
             limits.max_root_fields aliases: the answer's latency, and the
             longest /healthz answer while they run.
  recovery   a write waits while the worker's backoff has grown long (the
             breaker off); the backend comes back and one live query
             succeeds: the time from that answer to the write's delivery.

Environment: SIDECAR_BIN, BACKEND_BIN (examples/literal_backend), WRK_LUA,
RUN_DIR, PROXY_CORE, LOAD_CORE, LABEL (a name for this binary's rows),
ONLY (a comma-separated subset of the measurements).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

RUN_DIR = os.environ["RUN_DIR"]
SIDECAR = os.environ["SIDECAR_BIN"]
BACKEND = os.environ["BACKEND_BIN"]
WRK_LUA = os.environ["WRK_LUA"]
PROXY_CORE = os.environ.get("PROXY_CORE", "0")
LOAD_CORE = os.environ.get("LOAD_CORE", "1")
LABEL = os.environ.get("LABEL", "sidecar")
STARTED = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"port {port} did not open")


def start(args, log):
    p = subprocess.Popen(["taskset", "-c", PROXY_CORE] + args, stdout=open(log, "w"),
                         stderr=subprocess.STDOUT)
    STARTED.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.wait()


class Sidecar:
    def __init__(self, name, upstream_port, extra=""):
        self.dir = os.path.join(RUN_DIR, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port, self.admin = free_port(), free_port()
        cfg = os.path.join(self.dir, "sidecar.toml")
        with open(cfg, "w") as f:
            f.write(f'[listen]\naddress = "127.0.0.1:{self.port}"\n[admin]\naddress = "127.0.0.1:{self.admin}"\n'
                    f'[upstream]\nurl = "http://127.0.0.1:{upstream_port}"\n'
                    f'[spool]\npath = "{self.dir}/spool.sqlite3"\n{extra}\n[log]\naccess = false\n')
        self.proc = start([SIDECAR, "--config", cfg], os.path.join(self.dir, "log"))
        wait_port(self.port)
        wait_port(self.admin)

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=10) as r:
            return r.read().decode()

    def spool(self):
        return json.loads(self.get("/spool"))

    def metric(self, name):
        for line in self.get("/metrics").splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def post(self, body, timeout=30):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/graphql", data=body,
                                     headers={"content-type": "application/json", "x-api-key": "bench-key"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def stop(self):
        stop(self.proc)


def add_step(steps):
    """AddStep of (step id, content) pairs, as the SDK builds it."""
    decls, fields, variables = [], [], {}
    for i, (sid, content) in enumerate(steps):
        decls.append(f"$id_{i}: String!, $threadId_{i}: String, $type_{i}: StepType, $output_{i}: Json")
        fields.append(f"step{i}: ingestStep(id: $id_{i}, threadId: $threadId_{i}, type: $type_{i}, "
                      f"output: $output_{i}) {{ ok message }}")
        variables.update({f"id_{i}": sid, f"threadId_{i}": "thread-bench", f"type_{i}": "assistant_message",
                          f"output_{i}": {"content": content}})
    return json.dumps({"query": "mutation AddStep(%s) {\n%s\n}" % (", ".join(decls), "\n".join(fields)),
                       "variables": variables}).encode()


def emit(row):
    row = {"binary": LABEL, **row}
    print(json.dumps(row), flush=True)
    return row


def backend(port):
    p = start([BACKEND, f"127.0.0.1:{port}"], os.path.join(RUN_DIR, f"backend-{port}.log"))
    wait_port(port)
    return p


def until_empty(sc, timeout=120):
    t = time.time()
    while time.time() - t < timeout:
        if sc.spool()["depth"] == 0:
            return time.time() - t
        time.sleep(0.01)
    return None


def hot_key():
    up = free_port()
    be = backend(up)
    sc = Sidecar(f"hot-{LABEL}", up)
    body = os.path.join(RUN_DIR, "hot.json")
    with open(body, "w") as f:
        f.write(add_step([("STEP_ID", "version VERSION")]).decode())
    stored = lambda: sc.metric("datalayer_sidecar_spool_committed_total") + sc.metric(
        "datalayer_sidecar_spool_deduplicated_total")
    before = stored()
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c32", "-d5s", "--latency", "--timeout", "10s",
         "-s", WRK_LUA, f"http://127.0.0.1:{sc.port}/api/graphql"],
        env={**os.environ, "BODY_FILE": body, "VERSIONED": "1"}, capture_output=True, text=True)
    w = json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][-1])
    from_spool = stored() - before
    drained = until_empty(sc)
    row = emit({"bench": "hot_key", "connections": 32, "seconds": 5, "writes_per_s": round(w["rps"]),
                "writes": w["requests"], "non2xx": w["non2xx"], "errors": w["errors"],
                "answered_from_spool": int(from_spool),
                "share_from_spool": round(from_spool / max(w["requests"], 1), 4),
                "spool_empty_after_s": None if drained is None else round(drained, 2),
                "p99_us": w["p99_us"]})
    sc.stop()
    stop(be)
    return row


def drain(n=5000):
    up = free_port()
    sc = Sidecar(f"drain-{LABEL}", up)
    for v in range(n):
        sc.post(add_step([("one-step", f"v{v:06}")]))
    waiting = sc.spool()["depth"]
    be = backend(up)
    t0 = time.time()
    first = None
    # Watched at the backend: asking the sidecar (/spool reads the store)
    # every few milliseconds would slow the drain it measures.
    while time.time() - t0 < 300:
        with urllib.request.urlopen(f"http://127.0.0.1:{up}/stats", timeout=10) as r:
            steps = json.loads(r.read())["steps"]
        if first is None and steps > 0:
            first = time.time()
        if steps >= waiting:
            break
        time.sleep(0.01)
    end = time.time()
    row = emit({"bench": "drain", "versions_of_one_step": waiting,
                "versions_per_s": round(waiting / max(end - (first or t0), 1e-9)),
                "first_delivery_after_backend_up_s": round((first or end) - t0, 2)})
    sc.stop()
    stop(be)
    return row


def wide(aliases=1000, rounds=5):
    sc = Sidecar(f"wide-{LABEL}", free_port())
    sc.post(add_step([("first", "v1")]))  # the spool is not empty: the rest go behind
    worst = [0.0]
    running = [True]

    def probe():
        while running[0]:
            t = time.time()
            try:
                sc.get("/healthz")
            except OSError:
                pass
            worst[0] = max(worst[0], time.time() - t)
            time.sleep(0.005)

    th = threading.Thread(target=probe)
    th.start()
    took = []
    status = None
    for r in range(rounds):
        body = add_step([(f"wide-{r}-{i}", "x") for i in range(aliases)])
        t = time.time()
        status, _, _ = sc.post(body)
        took.append(time.time() - t)
    running[0] = False
    th.join()
    over = sc.post(add_step([(f"over-{i}", "x") for i in range(aliases + 1)]))[0]
    took.sort()
    row = emit({"bench": "wide", "aliases": aliases, "status": status, "over_limit_status": over,
                "median_ms": round(1000 * took[len(took) // 2], 1), "max_ms": round(1000 * took[-1], 1),
                "healthz_worst_ms": round(1000 * worst[0], 1)})
    sc.stop()
    return row


def recovery():
    up = free_port()
    # The breaker off and one attempt per delivery, so the worker's own
    # backoff is what it waits on (with the breaker on, both builds wait for
    # its open time and the live probe; with retries, a delivery still
    # retrying when the backend returns hides the backoff).
    sc = Sidecar(f"recovery-{LABEL}", up,
                 'replay_backoff_base = "1s"\nreplay_backoff_max = "30s"\n[breaker]\nenabled = false'
                 '\n[retry]\nmax_attempts = 1')
    sc.post(add_step([("waits", "v1")]))
    time.sleep(16)  # tries at 0, 1, 3, 7, 15 s: the next one is due at 31 s
    be = backend(up)
    query = json.dumps({"query": "query GetThread($id: String!) { threadDetail(id: $id) { id } }",
                        "variables": {"id": "t"}}).encode()
    # The first live answer the backend gives (the breaker may be open for
    # a moment after the outage: retry until one goes through).
    t0 = time.time()
    while sc.post(query)[0] != 200 and time.time() - t0 < 30:
        time.sleep(0.05)
    live = time.time()
    waited = until_empty(sc, timeout=30)
    row = emit({"bench": "recovery", "live_answer_after_backend_up_s": round(live - t0, 2),
                "delivered_after_live_answer_s": None if waited is None else round(waited, 2)})
    sc.stop()
    stop(be)
    return row


def main():
    benches = {"hot_key": hot_key, "drain": drain, "wide": wide, "recovery": recovery}
    wanted = os.environ.get("ONLY", "").split(",") if os.environ.get("ONLY") else list(benches)
    try:
        rows = [benches[b]() for b in wanted]
    finally:
        for p in STARTED:
            stop(p)
    print(f"\n{LABEL}:", file=sys.stderr)
    for r in rows:
        print("  " + ", ".join(f"{k}={v}" for k, v in r.items() if k != "binary"), file=sys.stderr)


if __name__ == "__main__":
    main()
