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
source "$REPO/tests/python-env.sh"
ensure_venv "$VENV" "$REPO/tests/e2e/requirements.txt" demo
ensure_sidecar "$REPO" release
exec "$VENV/bin/python" "$HERE/demo.py" --sidecar "$DLSC_BIN" "$@"
