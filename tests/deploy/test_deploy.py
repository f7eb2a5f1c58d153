"""The deployment files: the Kubernetes manifests render with kustomize and
validate against the Kubernetes API schemas of 1.29 (native sidecars) and of
the newest release the validator knows; they keep the sidecar contract (a
native sidecar gating the app on /readyz, hardened, with a grace period the
sidecar's own fits in); the config each overlay gives the sidecar passes
`datalayer-sidecar check-config`; Compose wires the app to the sidecar;
the alert rules pass `promtool check rules`; and every metric the dashboard
and the rules name is one the binary exports.
"""

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
OVERLAYS = ["emptydir", "statefulset", "postgres"]
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
BIN = os.environ.get("DLSC_BIN", str(REPO / "target" / "debug" / "datalayer-sidecar"))


def render(overlay):
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl (with its built-in kustomize) is needed to render the manifests")
    out = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
                         capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def workload(docs):
    return next(d for d in docs if d["kind"] in ("Deployment", "StatefulSet"))


def sidecar_of(docs):
    spec = workload(docs)["spec"]["template"]["spec"]
    return spec, next(c for c in spec.get("initContainers", []) if c["name"] == "datalayer-sidecar")


def config_of(docs):
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("datalayer-sidecar-config"))
    return cm["data"]["sidecar.toml"]


def duration_s(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)", text)
    assert m, text
    n, unit = int(m.group(1)), m.group(2)
    return {"ms": n / 1000, "s": n, "m": n * 60}[unit]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_are_valid_kubernetes(overlay, version):
    docs = render(overlay)
    assert {d["kind"] for d in docs} >= {"ConfigMap", "NetworkPolicy", "Service"}
    for d in docs:
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{overlay}: {d['kind']} {d['metadata']['name']} invalid for {version}: "
                        f"{e.message} at {list(e.path)}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_sidecar_is_a_native_sidecar_that_gates_the_app(overlay):
    docs = render(overlay)
    pod, sc = sidecar_of(docs)
    assert sc["restartPolicy"] == "Always", "a native sidecar (1.29+)"
    assert sc["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert sc["livenessProbe"]["httpGet"]["path"] == "/healthz"
    sec = sc["securityContext"]
    assert sec["readOnlyRootFilesystem"] is True and sec["allowPrivilegeEscalation"] is False
    assert sec["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert sc["resources"]["requests"]["memory"] and sc["resources"]["limits"]["memory"]
    cfg = tomllib.loads(config_of(docs))
    # The app talks to the sidecar on the pod's loopback.
    app = next(c for c in pod["containers"] if c["name"] == "app")
    url = next(e["value"] for e in app["env"] if e["name"] == "LITERAL_API_URL")
    assert url == "http://" + cfg["listen"]["address"]
    # The sidecar's own grace period fits in the pod's, with the app's
    # shutdown before it.
    grace = duration_s(cfg["shutdown"]["grace_period"])
    assert pod["terminationGracePeriodSeconds"] >= grace + 10
    assert cfg["shutdown"]["drain_spool"] is True
    # The admin port must answer the kubelet's probes on the pod's address.
    assert cfg["admin"]["address"].startswith("0.0.0.0:")
    mounts = {m["name"]: m["mountPath"] for m in sc["volumeMounts"]}
    assert cfg["spool"]["path"].startswith(mounts["spool"] + "/")


def test_overlays_put_the_spool_where_they_say():
    emptydir = workload(render("emptydir"))
    assert any("emptyDir" in v for v in emptydir["spec"]["template"]["spec"]["volumes"] if v["name"] == "spool")
    sts = workload(render("statefulset"))
    assert sts["kind"] == "StatefulSet"
    assert [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]] == ["spool"]
    pod, sc = sidecar_of(render("postgres"))
    env = {e["name"]: e.get("value") for e in sc["env"]}
    assert env["DATALAYER_SIDECAR_SPOOL_BACKEND"] == "postgres"
    assert "@" in env["DATALAYER_SIDECAR_SPOOL_POSTGRES_URL"] and ":" not in env["DATALAYER_SIDECAR_SPOOL_POSTGRES_URL"].split("//")[1].split("@")[0], "no password in the URL"
    secret = next(v for v in pod["volumes"] if v["name"] == "postgres-password")
    assert secret["secret"]["defaultMode"] == 0o400


def check_config(config_text, env, tmp):
    path = Path(tmp) / "sidecar.toml"
    path.write_text(config_text)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("DATALAYER_SIDECAR_")}
    run_env.update(env)
    return subprocess.run([BIN, "check-config", "--config", str(path),
                           "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
                          capture_output=True, text=True, env=run_env)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlays_config_passes_check_config(overlay, tmp_path):
    docs = render(overlay)
    _, sc = sidecar_of(docs)
    env = {e["name"]: e["value"] for e in sc.get("env", []) if "value" in e}
    if "DATALAYER_SIDECAR_SPOOL_POSTGRES_PASSWORD_FILE" in env:
        pw = tmp_path / "postgres-password"
        pw.write_text("not-a-real-password\n")
        env["DATALAYER_SIDECAR_SPOOL_POSTGRES_PASSWORD_FILE"] = str(pw)
    out = check_config(config_of(docs), env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "not-a-real-password" not in out.stdout + out.stderr
    if overlay == "postgres":
        assert 'backend = "postgres"' in out.stdout


def test_compose_wires_the_app_to_the_sidecar(tmp_path):
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    s = compose["services"]
    assert set(s) == {"app", "sidecar", "backend"}
    assert s["app"]["network_mode"] == "service:sidecar"
    assert s["app"]["environment"]["LITERAL_API_URL"] == "http://127.0.0.1:8787"
    assert s["app"]["depends_on"]["sidecar"]["condition"] == "service_healthy"
    assert s["sidecar"]["healthcheck"]["test"][-2:] == ["healthcheck", "--ready"]
    assert "sidecar-spool:/var/lib/datalayer-sidecar" in s["sidecar"]["volumes"]
    assert "sidecar-spool" in compose["volumes"]
    # Published on the host's loopback only.
    assert all(p.startswith("127.0.0.1:") for p in s["sidecar"]["ports"])
    for service in s.values():
        dockerfile = REPO / service["build"]["dockerfile"]
        assert dockerfile.exists(), dockerfile
    # The image's config with the environment Compose sets.
    env = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v) for k, v in s["sidecar"]["environment"].items()}
    out = check_config((REPO / "config" / "sidecar.toml").read_text(), env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert 'url = "http://backend:4000' in out.stdout


def test_alert_rules_pass_promtool():
    if shutil.which("promtool") is None:
        pytest.fail("promtool (Debian's prometheus package) is needed to check the rules")
    out = subprocess.run(["promtool", "check", "rules", str(REPO / "deploy" / "observability" / "alerts.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 8 rules found" in out.stdout


class Refuser:
    """An upstream that resets the first `resets` connections, then answers
    401 to everything: a write is spooled, then its replay is refused as a
    system refusal, so the families that only appear once used (attempts,
    pauses) are in /metrics too."""

    def __init__(self, resets):
        import threading
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.left = resets
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if self.left > 0:
                    self.left -= 1
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    continue
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n"
                                 b"content-length: 2\r\nconnection: close\r\n\r\n{}")
                except OSError:
                    pass


def exported_samples():
    """The sample names the binary's /metrics exposes after some traffic,
    from its TYPE lines: counters as `<name>_total`, histograms as
    `_bucket`, `_sum`, `_count`."""
    port, admin = free_port(), free_port()
    upstream = Refuser(resets=10)
    body = json.dumps({"query": "mutation AddStep($id_0: String!) { step0: ingestStep(id: $id_0) { ok message } }",
                       "variables": {"id_0": "metrics-probe"}}).encode()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "sidecar.toml"
        cfg.write_text(f'[upstream]\nurl = "http://127.0.0.1:{upstream.port}"\n'
                       f'[spool]\npath = "{tmp}/spool.sqlite3"\nreplay_backoff_base = "50ms"\n'
                       '[retry]\nmax_attempts = 2\nbackoff_base = "10ms"\nbackoff_max = "20ms"\n')
        p = subprocess.Popen([BIN, "--config", str(cfg), "--listen", f"127.0.0.1:{port}",
                              "--admin-listen", f"127.0.0.1:{admin}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline or p.poll() is not None:
                        raise
                    time.sleep(0.1)
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/graphql", data=body,
                                         headers={"content-type": "application/json", "x-api-key": "k"})
            answer = json.loads(urllib.request.urlopen(req, timeout=15).read())
            assert answer["data"]["step0"]["ok"] is True, answer
            while True:
                text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2).read().decode()
                if "datalayer_sidecar_spool_pauses_total" in text or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            p.terminate()
            p.wait(30)
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if not m:
            continue
        name, kind = m.groups()
        if kind == "counter":
            names.add(name + "_total")
        elif kind == "histogram":
            names.update({name + "_bucket", name + "_sum", name + "_count"})
        else:
            names.add(name)
    return names


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def named_metrics():
    obs = REPO / "deploy" / "observability"
    dash = json.loads((obs / "grafana-dashboard.json").read_text())
    exprs = []
    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(dash)
    rules = yaml.safe_load((obs / "alerts.yaml").read_text())
    rule_exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    pattern = re.compile(r"datalayer_sidecar_[a-z0-9_]+")
    return ({m for e in exprs for m in pattern.findall(e)},
            {m for e in rule_exprs for m in pattern.findall(e)})


def test_every_metric_the_dashboard_and_rules_name_is_exported():
    exported = exported_samples()
    assert "datalayer_sidecar_requests_total" in exported, sorted(exported)
    in_dashboard, in_rules = named_metrics()
    assert len(in_dashboard) >= 20 and len(in_rules) >= 8
    missing = sorted((in_dashboard | in_rules) - exported)
    assert not missing, f"named but not exported: {missing}"


def test_the_dashboard_covers_what_operators_watch():
    in_dashboard, _ = named_metrics()
    for needed in ["datalayer_sidecar_requests_total", "datalayer_sidecar_retries_total",
                   "datalayer_sidecar_not_retried_total", "datalayer_sidecar_breaker_state",
                   "datalayer_sidecar_spool_depth", "datalayer_sidecar_spool_oldest_age_seconds",
                   "datalayer_sidecar_spool_dead_letters", "datalayer_sidecar_request_duration_seconds_bucket"]:
        assert needed in in_dashboard, needed


def test_the_release_binary_keeps_the_code_a_sidecar_runs_together():
    """The image's binary (the Dockerfile's build step) places the functions a
    running sidecar executes, .cargo/text-order.txt, at the start of its
    text segment, so only those pages become resident (docs/benchmarks.md:
    idle RSS). Fails if the layout is lost (build.rs or .cargo/ordered-cc
    stopped working) or the file has gone stale: regenerate it with
    `bash bench/text-order.sh`."""
    if shutil.which("nm") is None:
        pytest.fail("nm (binutils) is needed to read the binary's symbols")
    if platform.machine() != "x86_64":
        pytest.skip("the ordered layout is built on x86_64 Linux only (build.rs)")
    build = subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "datalayer-sidecar"],
                           cwd=REPO, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    binary = REPO / "target" / "release" / "datalayer-sidecar"
    # Names without the parts that change from build to build, by the rule
    # of the script that wrote the order file.
    sys.path.insert(0, str(REPO / "bench"))
    from text_order import norm
    ordered = {line.split()[0] for line in (REPO / ".cargo" / "text-order.txt").read_text().splitlines()
               if line and not line.startswith("#")}
    assert len(ordered) > 1000, "the order file lists too few functions to be a real profile"
    nm = subprocess.run(["nm", "-n", "--defined-only", str(binary)], capture_output=True, text=True, check=True)
    functions = [line.split()[2] for line in nm.stdout.splitlines()
                 if len(line.split()) == 3 and line.split()[1] in "tTwW"]
    names = [norm(f) for f in functions]
    found = {n for n in names if n in ordered}
    # Stale: most of what the file names no longer exists under that name.
    assert len(found) >= 0.8 * len(ordered), (
        f"only {len(found)} of {len(ordered)} functions in .cargo/text-order.txt exist in the binary: "
        "regenerate it with bash bench/text-order.sh")
    # Laid out: the functions at the start of the text are the ordered ones
    # (in the compiler's own order about a fifth of them would be).
    head = names[:len(found)]
    share = sum(n in ordered for n in head) / len(head)
    assert share >= 0.9, f"only {share:.0%} of the first {len(head)} functions are ones the order file names"
