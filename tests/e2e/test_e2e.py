"""End-to-end: the real Chainlit data layer and LiteralAI SDK, through the
sidecar, against a faulty LiteralAI-style backend.

The sidecar runs with the shipped config, which has no [[routes]]: the
LiteralAI preset alone protects the app. For each fault schedule, several
conversations must end with every step upstream holding the app's last write
(0 lost, 0 stale) -- the version whose request left the app last; Chainlit
fires a step's create and update as separate tasks, and when its event loop
stalls both can leave at once (`raced_in_app`: either may end on top), every thread present with its name and participant, no
"Task exception was never retrieved", no "Error updating thread" and no SDK
error log line. The same flaky schedule run straight at the backend must
show losses -- proof that the test can see one.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SIDECAR = os.environ.get("DLSC_BIN", str(REPO / "target" / "debug" / "datalayer-sidecar"))

FLAKY = {"faults": ["close", "502", "503", "504", "429", "hang"], "rate": 0.3, "seed": 11, "hang": 12}
GRAPHQL = {"faults": ["gql_error", "not_ok"], "rate": 0.3, "seed": 12}
CLEAN = {"faults": [], "rate": 0.0, "seed": 1}

RESULTS = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


def http_json(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


class BackendProc:
    def __init__(self, tmp):
        self.port = free_port()
        self.ctl = free_port()
        self.log = open(tmp / "backend.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "backend.py"), "--port", str(self.port),
             "--control-port", str(self.ctl)], stdout=self.log, stderr=self.log)
        wait_port(self.ctl)
        wait_port(self.port)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def control(self, path, body=None):
        return http_json(f"http://127.0.0.1:{self.ctl}{path}", body if body is not None else None)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class SidecarProc:
    """The sidecar binary with the shipped config, on free ports."""

    def __init__(self, tmp, upstream):
        self.tmp = tmp
        self.config = tmp / "sidecar.toml"
        shipped = (REPO / "config" / "sidecar.toml").read_text()
        assert "routes" not in tomllib.loads(shipped), "the preset alone is tested"
        shipped = shipped.replace('url = "http://127.0.0.1:4000"', f'url = "{upstream}"')
        shipped = shipped.replace('path = "data/spool.sqlite3"', f'path = "{tmp / "spool.sqlite3"}"')
        self.config.write_text(shipped)
        self.start()

    def start(self, listen="127.0.0.1:0", admin="127.0.0.1:0"):
        self.logpath = self.tmp / f"sidecar-{time.time_ns()}.log"
        self.log = open(self.logpath, "w")
        self.proc = subprocess.Popen(
            [SIDECAR, "--config", str(self.config), "--listen", listen,
             "--admin-listen", admin], stdout=self.log, stderr=self.log)
        deadline = time.time() + 20
        while time.time() < deadline:
            for line in self.logpath.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("message") == "datalayer-sidecar started":
                    self.addr = rec["listen"]
                    self.admin = rec["admin"]
                    return
            if self.proc.poll() is not None:
                raise RuntimeError("sidecar exited:\n" + self.logpath.read_text())
            time.sleep(0.05)
        raise TimeoutError("sidecar did not start:\n" + self.logpath.read_text())

    @property
    def url(self):
        return f"http://{self.addr}"

    def spool(self):
        return http_json(f"http://{self.admin}/spool")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def driver(server, workdir, conversations=4, messages=5, rounds=1, pace=0.08):
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(HERE / "driver.py"), "--server", server, "--workdir", str(workdir),
         "--conversations", str(conversations), "--messages", str(messages),
         "--rounds", str(rounds), "--pace", str(pace)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ts_driver(server, conversations=4, messages=5, pace=0.08):
    """The LiteralAI TypeScript SDK (ts/driver.mjs), fire and forget."""
    return subprocess.Popen(
        ["node", str(HERE / "ts" / "driver.mjs"), "--server", server,
         "--conversations", str(conversations), "--messages", str(messages), "--pace", str(pace)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    lines = [l for l in out.splitlines() if l.startswith("{")]
    assert proc.returncode == 0 and lines, f"driver failed ({proc.returncode}):\n{err[-3000:]}"
    return json.loads(lines[-1])


def thread_ok(state, tid, want):
    t = state["threads"].get(tid) or {}
    return t.get("name") == want["name"] and t.get("participantId") == want["participant"]


def holds(result, state, k):
    """The step holds what the app sent last, or, when the app itself sent
    its last versions at once (a race in the app), one of those."""
    have = state["steps"].get(k, "<absent>")
    return have == result["expected"][k] or have in result.get("raced", {}).get(k, [])


def settle(backend, result, sidecar=None, timeout=90):
    """Wait until every step holds its expected content and every thread its
    name and participant (the spool may still be draining), or the timeout;
    return the backend's state."""
    expected, threads = result["expected"], result["threads"]
    deadline = time.time() + timeout
    while True:
        state = backend.control("/state")
        done = all(holds(result, state, k) for k in expected) and all(
            thread_ok(state, t, w) for t, w in threads.items())
        drained = sidecar is None or sidecar.spool()["depth"] == 0
        if (done and drained) or time.time() > deadline:
            return state
        time.sleep(0.25)


def score(name, result, state):
    expected = result["expected"]
    lost = [k for k in expected if k not in state["steps"]]
    stale = [k for k in expected if k in state["steps"] and not holds(result, state, k)]
    threads = result["threads"]
    bad_threads = [t for t, w in threads.items() if not thread_ok(state, t, w)]
    row = {
        "schedule": name,
        "writes": result["writes"],
        "steps": len(expected),
        "lost": len(lost),
        "stale": len(stale),
        "raced_in_app": len(result.get("raced", {})),
        "threads": len(threads),
        "threads_bad": len(bad_threads),
        "exceptions": result["task_exceptions"],
        "thread_errors": result["thread_errors"],
        "sdk_errors": result["sdk_errors"],
        "upstream_attempts": state["requests"],
        "faults": sum(state["faults"].values()),
    }
    RESULTS.append(row)
    print_table([row])
    for k in stale[:4]:
        history = [c for s, c in state.get("applied", []) if s == k]
        print(f"   stale {k}: want {expected[k]!r}, have {state['steps'][k]!r}, applied {history!r}")
        for r in state.get("received", []):
            mine = [(a, c) for a, s, c in r["steps"] if s == k]
            if mine:
                print(f"      t={r['t']} fault={r['fault']} aliases={len(r['steps'])} {mine!r}")
    if result["task_exception_samples"] or result["sdk_error_samples"]:
        print("   samples:", result["task_exception_samples"][:2], result["sdk_error_samples"][:2])
    return row


def print_table(rows):
    cols = ["schedule", "writes", "steps", "lost", "stale", "raced_in_app", "threads", "threads_bad", "exceptions",
            "thread_errors", "sdk_errors", "upstream_attempts", "faults"]
    print()
    print(" | ".join(f"{c:>13}" for c in cols))
    for r in rows:
        print(" | ".join(f"{str(r[c]):>13}" for c in cols))


def assert_nothing_lost(row):
    assert row["lost"] == 0, row
    assert row["stale"] == 0, row
    assert row["threads"] > 0 and row["threads_bad"] == 0, row
    assert row["exceptions"] == 0, row
    assert row["thread_errors"] == 0, row
    assert row["sdk_errors"] == 0, row


@pytest.fixture
def rig(tmp_path):
    backend = BackendProc(tmp_path)
    sidecars = []

    def sidecar():
        s = SidecarProc(tmp_path, backend.url)
        sidecars.append(s)
        return s

    yield backend, sidecar, tmp_path
    for s in sidecars:
        s.stop()
    backend.stop()


def test_clean(rig):
    backend, sidecar, tmp = rig
    sc = sidecar()
    backend.control("/schedule", CLEAN)
    result = finish(driver(sc.url, tmp / "app"))
    assert_nothing_lost(score("clean", result, settle(backend, result, sc)))


def test_flaky(rig):
    backend, sidecar, tmp = rig
    sc = sidecar()
    backend.control("/schedule", FLAKY)
    result = finish(driver(sc.url, tmp / "app"))
    row = score("flaky", result, settle(backend, result, sc))
    assert row["faults"] > 0, "the schedule injected faults"
    assert_nothing_lost(row)


def test_graphql_errors(rig):
    backend, sidecar, tmp = rig
    sc = sidecar()
    backend.control("/schedule", GRAPHQL)
    result = finish(driver(sc.url, tmp / "app"))
    row = score("graphql_errors", result, settle(backend, result, sc))
    assert row["faults"] > 0
    assert_nothing_lost(row)


def test_blackout_20s(rig):
    backend, sidecar, tmp = rig
    sc = sidecar()
    backend.control("/schedule", CLEAN)
    app = driver(sc.url, tmp / "app", conversations=3, messages=8, pace=1.0)
    time.sleep(2)
    backend.control("/blackout", {"seconds": 20})
    assert backend.control("/state")["listening"] is False
    result = finish(app)
    row = score("blackout_20s", result, settle(backend, result, sc))
    assert_nothing_lost(row)


def test_sidecar_killed_and_restarted(rig):
    backend, sidecar, tmp = rig
    sc = sidecar()
    # Round 1: the backend refuses everything, so every write is spooled.
    backend.control("/schedule", {"faults": ["503"], "rate": 1.0, "seed": 3})
    app = driver(sc.url, tmp / "app", rounds=2)
    line = app.stdout.readline()
    assert line.startswith("ROUND_DONE"), line
    assert sc.spool()["depth"] > 0, "writes are waiting in the spool"
    # SIGKILL: no shutdown, no flush. Acknowledged writes must survive.
    sc.kill()
    backend.control("/schedule", CLEAN)
    sc.start(listen=sc.addr, admin=sc.admin)
    app.stdin.write("go\n")
    app.stdin.flush()
    result = finish(app)
    row = score("sidecar_sigkill", result, settle(backend, result, sc))
    assert_nothing_lost(row)


def rotation(backend, app):
    """The backend refuses every request (401) for 15 s of a ~30 s run, as
    while an API key is being rotated; the app goes on writing."""
    time.sleep(6)
    backend.control("/unauthorized", {"seconds": 15})
    return finish(app)


def test_key_rotation_401_for_15s(rig):
    backend, sidecar, tmp = rig
    sc = sidecar()
    backend.control("/schedule", CLEAN)
    result = rotation(backend, driver(sc.url, tmp / "app", conversations=4, messages=8, pace=1.2))
    row = score("key_rotation_401_15s", result, settle(backend, result, sc))
    assert row["faults"] > 0, "the backend refused requests"
    assert_nothing_lost(row)


def test_key_rotation_401_for_15s_typescript_sdk(rig):
    backend, sidecar, tmp = rig
    sc = sidecar()
    backend.control("/schedule", CLEAN)
    result = rotation(backend, ts_driver(sc.url, conversations=4, messages=12, pace=1.2))
    row = score("key_rotation_401_15s_ts_sdk", result, settle(backend, result, sc))
    assert row["faults"] > 0, "the backend refused requests"
    assert_nothing_lost(row)


def test_key_rotation_without_the_sidecar_loses_steps(rig):
    backend, _, tmp = rig
    backend.control("/schedule", CLEAN)
    result = rotation(backend, driver(backend.url, tmp / "app", conversations=4, messages=8, pace=1.2))
    row = score("key_rotation_direct_no_sidecar", result, settle(backend, result, None, timeout=2))
    assert row["lost"] + row["stale"] > 0, "the test must be able to see a loss"
    assert row["exceptions"] > 0, row


def test_flaky_without_the_sidecar_loses_steps(rig):
    backend, _, tmp = rig
    backend.control("/schedule", FLAKY)
    result = finish(driver(backend.url, tmp / "app"))
    row = score("flaky_direct_no_sidecar", result, settle(backend, result, None, timeout=2))
    assert row["lost"] + row["stale"] + row["threads_bad"] > 0, "the test must be able to see a loss"
    assert row["exceptions"] > 0 or row["sdk_errors"] > 0, row


def teardown_module(module):
    if RESULTS:
        print("\n\nSummary (all schedules)")
        print_table(RESULTS)
