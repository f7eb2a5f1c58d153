"""The LiteralAI preset covers every operation the SDK can send.

Reads the SDK's own GraphQL documents (sdk_documents.py) from the version
chainlit pins (this virtualenv) and from the last release (installed beside
it by run.sh), asks the sidecar binary which route each takes
(`datalayer-sidecar explain`), and checks it against the preset's table in
docs/literalai-preset.md (which a Rust test keeps equal to the code's).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SIDECAR = os.environ.get("DLSC_BIN", str(REPO / "target" / "debug" / "datalayer-sidecar"))
SDK_LAST = HERE / ".sdk-0.1.300"

SDKS = [("0.1.201", None), ("0.1.300", SDK_LAST)]


def table():
    """Root field -> handling, from the docs table."""
    rows = {}
    for line in (REPO / "docs" / "literalai-preset.md").read_text().splitlines():
        m = re.match(r"\| `(\w+)` \| (mutation|query) \| (\w+) \|", line)
        if m:
            rows[m.group(1)] = m.group(3)
    assert len(rows) > 30, "the docs table was found"
    return rows


def documents(path):
    env = dict(os.environ)
    if path is not None:
        assert path.is_dir(), f"{path} is installed by tests/e2e/run.sh"
        env["PYTHONPATH"] = str(path)
    out = subprocess.run([sys.executable, str(HERE / "sdk_documents.py")], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def explain(config, query):
    body = json.dumps({"query": query, "variables": {}})
    out = subprocess.run([SIDECAR, "explain", "--config", str(config), "-"], input=body,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def expected_route(kind, handlings):
    if kind == "query":
        return "queries"
    if all(h == "spooled" for h in handlings):
        return "spooled_writes"
    if all(h in ("spooled", "idempotent") for h in handlings):
        return "idempotent_writes"
    return "mutations"


@pytest.mark.parametrize("version,path", SDKS, ids=[v for v, _ in SDKS])
def test_every_sdk_operation_is_in_the_preset_table(version, path, tmp_path):
    rows = table()
    config = tmp_path / "sidecar.toml"
    config.write_text('[upstream]\nurl = "http://127.0.0.1:9"\n')
    sdk = documents(path)
    assert sdk["version"] == version, sdk["file"]
    docs = sdk["documents"]
    assert len(docs) >= 40, "the SDK's documents were found"
    seen = set()
    for doc in docs:
        e = explain(config, doc["query"])
        assert e["invalid_graphql"] is None, (doc["source"], e)
        op = e["operation"]
        fields = [f["field"] for f in op["root_fields"]]
        missing = [f for f in fields if f not in rows]
        assert not missing, f"{doc['source']}: {missing} missing from the preset table"
        handlings = [rows[f] for f in fields]
        assert e["route"] == expected_route(op["type"], handlings), (doc["source"], e)
        assert e["spooled_on_failure"] == (e["route"] == "spooled_writes"), e
        seen.update(fields)
    # And the table names nothing the SDK does not send.
    stale = set(rows) - seen
    assert not stale, f"in the table but not sent by SDK {version}: {stale}"
