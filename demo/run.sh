#!/usr/bin/env bash
# The one-command demo: a real Chainlit app losing chat history on a bad
# network, and not losing it through datalayer-sidecar. See demo/demo.py.
#
#   bash demo/run.sh
#
# First run: builds the sidecar (release) and creates a Python virtualenv
# with the app's dependencies (chainlit 2.12.0 and the LiteralAI SDK it
# pins) — the same one the end-to-end tests use. After that it needs no
# network: everything runs on loopback. Takes about two minutes.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
VENV="${E2E_VENV:-$REPO/tests/e2e/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import chainlit, literalai, graphql, socketio, aiohttp' 2>/dev/null; then
    echo "demo: creating $VENV (chainlit==2.12.0, graphql-core)" >&2
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REPO/tests/e2e/requirements.txt"
fi
if [ -z "${DLSC_BIN:-}" ]; then
    echo "demo: building the sidecar" >&2
    (cd "$REPO" && cargo build --release --locked --bin datalayer-sidecar 2>&1 | tail -n 1 >&2)
    DLSC_BIN="$REPO/target/release/datalayer-sidecar"
fi
exec "$VENV/bin/python" "$HERE/demo.py" --sidecar "$DLSC_BIN" "$@"
