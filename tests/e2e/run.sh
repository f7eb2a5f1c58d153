#!/usr/bin/env bash
# End-to-end suite: the real Chainlit data layer (chainlit==2.12.0 and the
# literalai SDK it pins) through the sidecar against a faulty backend.
# Creates a virtualenv under tests/e2e/.venv (reused when it is complete),
# builds the sidecar, runs pytest. Python 3.11 and pip are all it needs.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${E2E_VENV:-$HERE/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import chainlit, literalai, pytest' 2>/dev/null; then
    echo "e2e: creating $VENV (chainlit==2.12.0, pytest)" >&2
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements.txt"
fi

if [ -z "${DLSC_BIN:-}" ]; then
    (cd "$REPO" && cargo build --locked --bin datalayer-sidecar >&2)
    export DLSC_BIN="$REPO/target/debug/datalayer-sidecar"
fi

cd "$HERE"
exec "$VENV/bin/python" -m pytest -s -q -p no:cacheprovider test_e2e.py "$@"
