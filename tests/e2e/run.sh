#!/usr/bin/env bash
# End-to-end suite: the real Chainlit data layer (chainlit==2.12.0 and the
# literalai SDK it pins), and the LiteralAI TypeScript SDK (ts/, Node.js),
# through the sidecar against a faulty backend, and
# the preset's coverage of every document the SDK can send (the pinned
# 0.1.201 and the last release, 0.1.300, installed beside the venv).
# Creates a virtualenv under tests/e2e/.venv (reused when it is complete),
# builds the sidecar, runs pytest. Python 3.11 and pip are all it needs.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${E2E_VENV:-$HERE/.venv}"
source "$REPO/tests/python-env.sh"
ensure_venv "$VENV" "$HERE/requirements.txt" e2e

SDK_LAST="$HERE/.sdk-0.1.300"
if [ ! -f "$SDK_LAST/literalai/__init__.py" ]; then
    echo "e2e: installing literalai==0.1.300 into $SDK_LAST" >&2
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --target "$SDK_LAST" literalai==0.1.300
fi

# The LiteralAI TypeScript SDK, pinned by the lockfile, for the tests that
# drive it (ts/driver.mjs); reinstalled when the lockfile changes.
TS="$HERE/ts"
if ! cmp -s "$TS/package-lock.json" "$TS/node_modules/.package-lock.installed" 2>/dev/null; then
    echo "e2e: installing the TypeScript SDK into $TS/node_modules" >&2
    (cd "$TS" && npm ci --silent --no-audit --no-fund)
    cp "$TS/package-lock.json" "$TS/node_modules/.package-lock.installed"
fi

ensure_sidecar "$REPO" debug

cd "$HERE"
exec "$VENV/bin/python" -m pytest -s -q -p no:cacheprovider test_preset.py test_e2e.py "$@"
